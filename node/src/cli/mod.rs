//! Client subcommands: talk to a node's REST API, print tables for people
//! and JSON (`--json`) for scripts.

mod client;
mod commands;
mod render;
#[cfg(test)]
mod tests;

pub use client::{
    saved_token_file, with_query, CliConfig, CliError, Client, Credentials, DEFAULT_URL,
};
pub use commands::{
    action_get, audit_status, delete, execution_cancel, execution_children, execution_get,
    execution_list, execution_set_status, execution_tail, follow, get_show, inquiry_respond,
    list_table, login, node_list, pack_manage, pack_register, parse_params, rule_create,
    rule_set_enabled, rule_test, run, run_params, ExecutionFilters, RuleToTest, RunMode, TestEvent,
};
pub use render::{exit_quietly_when_stdout_closes, print_table, show, Column};
