//! Jinja rendering (minijinja) with StackStorm's filters and semantics.
