//! Resolving an execution's parameters from runner and action parameter
//! specs, caller-provided values and Jinja-templated defaults.
