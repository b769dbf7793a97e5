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

/// Reports wait milliseconds: a linger of more than a second is refused, not left to hold
/// every report (and a stop) that long.
#[test]
fn a_results_linger_longer_than_a_second_is_refused() {
    use clap::Parser;
    let runs = "--runs-database-url=postgres://localhost/x";
    for (linger, refused) in [("1s", false), ("1001ms", true), ("30000y", true)] {
        let flag = format!("--results-linger={linger}");
        let config = worker::Config::try_parse_from(["worker", runs, flag.as_str()]).unwrap();
        match config.validate() {
            Ok(()) => assert!(!refused, "{linger} was accepted"),
            Err(error) => {
                assert!(refused, "{linger}: {error}");
                assert!(error.to_string().contains("RESULTS_LINGER"), "{error}");
            }
        }
    }
}

/// A root that resolves to `/` or to a system tree is refused at start-up, whatever the
/// configured path looks like; `allow_system_path` is the explicit way to permit a tree.
#[test]
fn roots_that_resolve_to_the_filesystem_root_or_a_system_tree_are_refused() {
    use clap::Parser;
    let scratch = tempfile::tempdir().unwrap();
    let to_root = scratch.path().join("to-root");
    std::os::unix::fs::symlink("/", &to_root).unwrap();
    let to_usr = scratch.path().join("to-usr");
    std::os::unix::fs::symlink("/usr/share", &to_usr).unwrap();
    for (roots, expected) in [
        ("x=/tmp/..".to_owned(), "resolves to the filesystem root"),
        (
            format!("x={}", to_root.display()),
            "resolves to the filesystem root",
        ),
        (
            format!("x={}/..", to_root.display()),
            "resolves to the filesystem root",
        ),
        (format!("x={}", to_usr.display()), "system tree /usr"),
        ("x=/var".to_owned(), "holds the system tree /var/lib"),
        ("x=/home".to_owned(), "home directories"),
        (
            format!("x={};allow_system_path", to_root.display()),
            "resolves to the filesystem root",
        ),
    ] {
        let config =
            worker::Config::try_parse_from(["worker".to_owned(), format!("--temp-roots={roots}")])
                .unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains(expected), "{roots}: {error}");
    }
    let allowed = format!("--temp-roots=x={};allow_system_path", to_usr.display());
    let config = worker::Config::try_parse_from(["worker".to_owned(), allowed]).unwrap();
    config.validate().unwrap();
    assert_eq!(
        config.temp_roots().unwrap()["x"].path,
        std::path::Path::new("/usr/share")
    );
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
