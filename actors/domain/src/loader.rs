//! Reading packs from disk in StackStorm's layout, reporting every problem
//! with file, line and field.
