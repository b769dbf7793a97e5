use clap::CommandFactory;

/// Every setting of `--help` is documented in the README's configuration tables.
#[test]
fn every_setting_is_documented_in_the_readme() {
    let readme = include_str!("../../../README.md");
    let command = producer_api::Config::command();
    let mut missing = Vec::new();
    for arg in command.get_arguments() {
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            if !readme.contains(&format!("| `{env}` |")) {
                missing.push(env.into_owned());
            }
        }
    }
    assert!(missing.is_empty(), "README lacks: {missing:?}");
}

/// Every metric name of `shared::runtime::metrics` has a row in the README's metrics table.
#[test]
fn every_metric_is_documented_in_the_readme() {
    let readme = include_str!("../../../README.md");
    let source = include_str!("../../../shared/src/runtime/metrics.rs");
    let names: Vec<&str> = source
        .lines()
        .filter_map(|line| line.split('"').nth(1))
        .filter(|name| name.starts_with("cleanup_"))
        .collect();
    assert!(names.len() > 20, "found {names:?}");
    let missing: Vec<&&str> = names
        .iter()
        .filter(|name| !readme.contains(&format!("| `{name}` |")))
        .collect();
    assert!(missing.is_empty(), "README lacks metrics: {missing:?}");
}

/// A ledger pool too small for the relay's listener, the relay, the recorder, the
/// scheduler and the requests is refused at start, with the setting named.
#[test]
fn a_ledger_pool_smaller_than_the_api_needs_is_refused() {
    use clap::Parser as _;
    let config = |connections: usize| {
        producer_api::Config::try_parse_from([
            "producer-api".to_owned(),
            "--database-url=postgres://postgres@127.0.0.1/unused".to_owned(),
            format!("--database-max-connections={connections}"),
            format!("--api-tokens={}", test_support::TOKEN),
            format!("--task-signing-keys={}", test_support::SIGNING_KEYS),
        ])
        .expect("parses")
    };
    let least = producer_api::config::MIN_DATABASE_CONNECTIONS;
    let refused = config(least - 1).validate().unwrap_err().to_string();
    assert!(
        refused.contains("DATABASE_MAX_CONNECTIONS must be at least"),
        "{refused}"
    );
    config(least).validate().expect("the smallest pool allowed");
}

/// An enqueue statement's timeout that would let an enqueue outlast the requests' own
/// limit (and be answered 408 while its statement may still commit), or one under a
/// second, is refused at start, with the setting named.
#[test]
fn an_enqueue_statement_timeout_a_request_cannot_wait_for_is_refused() {
    use clap::Parser as _;
    let config = |statement: &str, acquire: &str| {
        producer_api::Config::try_parse_from([
            "producer-api".to_owned(),
            "--database-url=postgres://postgres@127.0.0.1/unused".to_owned(),
            format!("--enqueue-statement-timeout={statement}"),
            format!("--database-acquire-timeout={acquire}"),
            format!("--api-tokens={}", test_support::TOKEN),
            format!("--task-signing-keys={}", test_support::SIGNING_KEYS),
        ])
        .expect("parses")
    };
    for (statement, acquire) in [("500ms", "3s"), ("6s", "3s"), ("5s", "4500ms")] {
        let refused = config(statement, acquire)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("ENQUEUE_STATEMENT_TIMEOUT"),
            "{statement}, {acquire}: {refused}"
        );
    }
    // 1 s + 2 x 3 s + 2 s + 3 x (5 s + 1 s) = 27 s, under the 30 s a request may take.
    config("5s", "3s")
        .validate()
        .expect("within the request's limit");
    config("1s", "3s").validate().expect("the shortest allowed");
}
