use super::*;
use serde_json::json;

#[test]
fn params_are_strings_unless_structured() {
    let p = parse_params(&[
        "cmd=echo a=b".into(),
        "n=5".into(),
        "env={\"A\":\"1\"}".into(),
    ])
    .unwrap();
    assert_eq!(p["cmd"], json!("echo a=b"));
    assert_eq!(p["n"], json!("5"));
    assert_eq!(p["env"], json!({"A": "1"}));
    assert!(parse_params(&["novalue".into()]).is_err());
}

#[test]
fn run_joins_the_words_after_the_pairs_into_cmd() {
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let p = run_params(&words(&["timeout=5", "ls", "-la", "a=b"])).unwrap();
    assert_eq!(p["timeout"], json!("5"));
    assert_eq!(p["cmd"], json!("ls -la a=b"));
    let p = run_params(&words(&["cmd=date"])).unwrap();
    assert_eq!(p["cmd"], json!("date"));
    assert!(run_params(&[]).unwrap().is_empty());
}

#[test]
fn rule_test_arguments_need_exactly_one_of_each() {
    use std::path::PathBuf;
    assert_eq!(
        TestEvent::from_args(Some("i".into()), None).unwrap(),
        TestEvent::TriggerInstance("i".into())
    );
    assert!(TestEvent::from_args(Some("i".into()), Some(PathBuf::from("p"))).is_err());
    assert!(TestEvent::from_args(None, None).is_err());
    assert_eq!(
        RuleToTest::from_args(None, Some(PathBuf::from("r.yaml"))).unwrap(),
        RuleToTest::File("r.yaml".into())
    );
    assert!(RuleToTest::from_args(Some("a.b".into()), Some(PathBuf::from("f"))).is_err());
    assert!(RuleToTest::from_args(None, None).is_err());
}
