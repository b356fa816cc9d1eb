// Intentionally empty: the translation unit that carries a shared precompiled header.
