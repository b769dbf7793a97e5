use clap::CommandFactory;

/// Every setting of `--help` is documented in the README's configuration tables.
#[test]
fn every_setting_is_documented_in_the_readme() {
    let readme = include_str!("../../../README.md");
    let missing: Vec<String> = worker::Config::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env().map(|e| e.to_string_lossy().into_owned()))
        .filter(|env| !readme.contains(&format!("| `{env}` |")))
        .collect();
    assert!(missing.is_empty(), "README lacks: {missing:?}");
}

#[test]
fn a_worker_with_nothing_to_do_refuses_to_start() {
    use clap::Parser;
    let config = worker::Config::try_parse_from(["worker", "--temp-roots="]).unwrap();
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("nothing to do"), "{error}");
    let config =
        worker::Config::try_parse_from(["worker", "--temp-roots=tmp=relative/path"]).unwrap();
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("must be absolute"));
    let config =
        worker::Config::try_parse_from(["worker", "--temp-roots=a=/srv/tmp,b=/srv/tmp/inner"])
            .unwrap();
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("overlap"));
    let config = worker::Config::try_parse_from(["worker", "--temp-roots=a=/x,a=/y"]).unwrap();
    assert!(config.validate().unwrap_err().to_string().contains("twice"));
    let config = worker::Config::try_parse_from([
        "worker",
        "--runs-database-url=postgres://localhost/x",
        "--runs-table=runs; DROP TABLE users",
    ])
    .unwrap();
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("not a valid SQL identifier"));
}

#[tokio::test]
async fn a_worker_refuses_to_start_without_task_signing_keys_unless_unsigned_tasks_are_allowed() {
    use clap::Parser;
    let scratch = tempfile::tempdir().unwrap();
    let roots = format!("--temp-roots=scratch={}", scratch.path().display());
    let args = ["worker", roots.as_str(), "--metrics-addr=127.0.0.1:0"];
    let config = worker::Config::try_parse_from(args).unwrap();
    let Err(error) = worker::Application::build(config).await else {
        panic!("a worker without TASK_SIGNING_KEYS started");
    };
    let error = error.to_string();
    assert!(error.contains("TASK_SIGNING_KEYS"), "{error}");
    assert!(error.contains("--allow-unsigned-tasks"), "{error}");

    let unsigned = [&args[..], &["--allow-unsigned-tasks"]].concat();
    let config = worker::Config::try_parse_from(unsigned).unwrap();
    assert!(worker::Application::build(config).await.is_ok());

    let keys = "--task-signing-keys=k1:short";
    let config = worker::Config::try_parse_from([&args[..], &[keys]].concat()).unwrap();
    let Err(error) = worker::Application::build(config).await else {
        panic!("a worker with a short secret started");
    };
    assert!(error.to_string().contains("too short"), "{error}");
}
