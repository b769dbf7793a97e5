use super::*;
use serde_json::json;

fn runs(value: serde_json::Value) -> Result<TaskSpec, String> {
    let params: CleanupRunsParams = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let spec = TaskSpec::CleanupRuns(params);
    spec.validate(&ValidationRules::default())
        .map_err(|e| e.to_string())?;
    Ok(spec)
}

fn temp(value: serde_json::Value) -> Result<TaskSpec, String> {
    let params: CleanupTempFilesParams =
        serde_json::from_value(value).map_err(|e| e.to_string())?;
    let spec = TaskSpec::CleanupTempFiles(params);
    spec.validate(&ValidationRules::default())
        .map_err(|e| e.to_string())?;
    Ok(spec)
}

#[test]
fn minimal_runs_params_take_defaults() {
    let spec = runs(json!({"max_age_hours": 48})).unwrap();
    let TaskSpec::CleanupRuns(p) = spec else {
        panic!("wrong kind")
    };
    assert!(!p.dry_run);
    assert_eq!(p.statuses, None);
    assert_eq!(p.batch_size, None);
}

#[test]
fn unknown_fields_are_rejected_with_their_name() {
    let err = runs(json!({"max_age_hours": 48, "table": "users"})).unwrap_err();
    assert!(err.contains("unknown field `table`"), "{err}");
    let err = temp(json!({"max_age_hours": 48, "path": "/etc"})).unwrap_err();
    assert!(err.contains("unknown field `path`"), "{err}");
}

#[test]
fn age_must_be_positive_and_above_the_floor() {
    assert!(runs(json!({"max_age_hours": 0}))
        .unwrap_err()
        .contains("greater than 0"));
    assert!(runs(json!({"max_age_hours": -3}))
        .unwrap_err()
        .contains("greater than 0"));
    assert!(runs(json!({"max_age_hours": 0.5}))
        .unwrap_err()
        .contains("floor"));
    assert!(runs(json!({"max_age_hours": 1e9}))
        .unwrap_err()
        .contains("at most"));
    assert!(runs(json!({"max_age_hours": "48"}))
        .unwrap_err()
        .contains("invalid type"));
    assert!(runs(json!({}))
        .unwrap_err()
        .contains("missing field `max_age_hours`"));
}

#[test]
fn statuses_must_be_a_subset_of_the_terminal_statuses() {
    assert!(runs(json!({"max_age_hours": 2, "statuses": ["failed"]})).is_ok());
    let err = runs(json!({"max_age_hours": 2, "statuses": ["running"]})).unwrap_err();
    assert!(err.contains("`running` is not a terminal status"), "{err}");
    let err = runs(json!({"max_age_hours": 2, "statuses": []})).unwrap_err();
    assert!(err.contains("must not be empty"), "{err}");
    let err = runs(json!({"max_age_hours": 2, "statuses": ["failed", "failed"]})).unwrap_err();
    assert!(err.contains("twice"), "{err}");
}

#[test]
fn batch_size_and_caps_are_bounded() {
    assert!(runs(json!({"max_age_hours": 2, "batch_size": 0})).is_err());
    assert!(runs(json!({"max_age_hours": 2, "batch_size": 10001})).is_err());
    assert!(runs(json!({"max_age_hours": 2, "batch_size": 10000})).is_ok());
    assert!(runs(json!({"max_age_hours": 2, "max_rows": 0})).is_err());
    assert!(temp(json!({"max_age_hours": 2, "max_files": 0})).is_err());
    // Counts are PostgreSQL bigints: one more than i64::MAX is refused, not wrapped.
    assert!(runs(json!({"max_age_hours": 2, "max_rows": 9223372036854775807_u64})).is_ok());
    let err = runs(json!({"max_age_hours": 2, "max_rows": 9223372036854775808_u64})).unwrap_err();
    assert!(err.contains("at most 9223372036854775807"), "{err}");
    let err = temp(json!({"max_age_hours": 2, "max_files": 9223372036854775808_u64})).unwrap_err();
    assert!(err.contains("max_files"), "{err}");
    assert!(runs(json!({"max_age_hours": 2, "batch_size": -1}))
        .unwrap_err()
        .contains("invalid value"));
}

#[test]
fn per_task_attempts_stay_within_the_limit() {
    assert!(runs(json!({"max_age_hours": 2, "max_attempts": 5})).is_ok());
    assert!(runs(json!({"max_age_hours": 2, "max_attempts": 0})).is_err());
    let err = temp(json!({"max_age_hours": 2, "max_attempts": 11})).unwrap_err();
    assert!(err.contains("between 1 and 10"), "{err}");
}

#[test]
fn roots_are_names_not_paths() {
    assert!(temp(json!({"max_age_hours": 2, "root": "scratch"})).is_ok());
    for bad in ["/tmp", "../etc", "a/b", ""] {
        let err = temp(json!({"max_age_hours": 2, "root": bad})).unwrap_err();
        assert!(err.contains("not a root name"), "{bad}: {err}");
    }
}

#[test]
fn patterns_must_be_relative_valid_globs() {
    assert!(temp(json!({"max_age_hours": 2, "patterns": ["*.tmp", "cache/**"]})).is_ok());
    assert!(temp(json!({"max_age_hours": 2, "patterns": ["/etc/*"]}))
        .unwrap_err()
        .contains("absolute"));
    assert!(temp(json!({"max_age_hours": 2, "patterns": ["../*"]}))
        .unwrap_err()
        .contains("`..`"));
    assert!(temp(json!({"max_age_hours": 2, "patterns": ["a[b"]}))
        .unwrap_err()
        .contains("not a valid glob"));
    assert!(temp(json!({"max_age_hours": 2, "patterns": []})).is_err());
}

#[test]
fn spec_round_trips_through_kind_and_params() {
    let spec = temp(json!({"max_age_hours": 3, "root": "a", "dry_run": true})).unwrap();
    let back = TaskSpec::from_parts(spec.kind(), spec.params_json()).unwrap();
    assert_eq!(spec, back);
    let tagged = serde_json::to_value(&spec).unwrap();
    assert_eq!(tagged["kind"], "cleanup_temp_files");
    assert_eq!(tagged["params"]["root"], "a");
}

#[test]
fn kinds_parse_from_their_names() {
    for kind in TaskKind::ALL {
        assert_eq!(kind.as_str().parse::<TaskKind>().unwrap(), kind);
    }
    assert!("cleanup_users".parse::<TaskKind>().is_err());
}

#[test]
fn numbers_in_errors_are_short() {
    let tiny = runs(json!({"max_age_hours": 5e-324})).unwrap_err();
    assert!(tiny.ends_with("got 5e-324"), "{tiny}");
    assert!(tiny.len() < 120, "{tiny}");
    let floor = runs(json!({"max_age_hours": 0.5})).unwrap_err();
    assert!(
        floor.contains("at least 1 ") && floor.ends_with("got 0.5"),
        "{floor}"
    );
}

#[test]
fn lengths_count_characters_as_the_openapi_document_does() {
    let long = |n: usize| "é".repeat(n);
    assert!(temp(json!({"max_age_hours": 2, "patterns": [long(256)]})).is_ok());
    assert!(temp(json!({"max_age_hours": 2, "patterns": [long(257)]}))
        .unwrap_err()
        .contains("1 to 256 characters, got 257"));
    let rules = ValidationRules {
        scope_columns: ["project_id".to_owned()].into(),
        ..ValidationRules::default()
    };
    let scoped = |value: String| {
        let params: CleanupRunsParams =
            serde_json::from_value(json!({"max_age_hours": 2, "scope": {"project_id": value}}))
                .unwrap();
        TaskSpec::CleanupRuns(params).validate(&rules)
    };
    assert!(scoped(long(256)).is_ok());
    assert!(scoped("4\u{0}2".to_owned())
        .unwrap_err()
        .to_string()
        .contains("NUL"));
    assert!(scoped(long(257))
        .unwrap_err()
        .to_string()
        .contains("longer than 256 characters"));
}

#[test]
fn counts_may_be_written_with_a_zero_fraction() {
    let TaskSpec::CleanupRuns(p) =
        runs(json!({"max_age_hours": 2, "batch_size": 100.0, "max_attempts": 2.0})).unwrap()
    else {
        panic!("wrong kind")
    };
    assert_eq!((p.batch_size, p.max_attempts), (Some(100), Some(2)));
    // Stored and shown as the whole numbers they are.
    assert_eq!(
        TaskSpec::CleanupRuns(p).params_json()["batch_size"],
        json!(100)
    );
    assert!(runs(json!({"max_age_hours": 2, "batch_size": 100.5})).is_err());
    assert!(temp(json!({"max_age_hours": 2, "max_files": 3.0})).is_ok());
}

/// The document's glob pattern: everything it matches, the API accepts; the usual globs
/// it matches. (The `regex` crate has no look-ahead: the two look-aheads of the start,
/// not absolute and no `..` component, are checked here by hand.)
#[test]
fn the_documented_glob_pattern_matches_only_valid_globs() {
    let prefix = r"^(?!/)(?!(?:[\s\S]*/)?\.\.(?:/|(?![\s\S])))";
    let body = GLOB_PATTERN_REGEX
        .strip_prefix(prefix)
        .expect("the pattern starts with its two look-aheads");
    let core = regex::Regex::new(&format!("^{body}")).unwrap();
    let documented =
        |p: &str| !p.starts_with('/') && !p.split('/').any(|c| c == "..") && core.is_match(p);
    let usual = [
        "*.tmp",
        "cache/**",
        "**/*.log",
        "a?c",
        "[abc].txt",
        "[!abc]",
        "[^x]y",
        "[a-z]*",
        "[0-9][0-9]",
        "file[A-Z0-9_]",
        "{a,b}",
        "*.{tmp,bak}",
        "{}",
        "x{,y}",
        r"\*",
        r"\[",
        "a]b",
        "a,b",
        "..x",
        "x..",
        "a/..b/c",
        "é/*",
        "[[]",
    ];
    let odd = [
        "[",
        "[]",
        "[!]",
        "[^]",
        "[z-a]",
        "[a-z-0]",
        "{a",
        "a}",
        "{a,{b,c}}",
        r"a\",
        "/abs",
        "../x",
        "a/../b",
        "a/..",
        "..",
        "[b-d]",
        "[]]",
        "{[a-z],b}",
        "{a,b}}",
        "[a-",
        r"\",
        "",
        "a\nb",
        "[a\\]]",
        "[a-]",
        "a\0b",
        "[\0]",
        "{a,\0}",
        "\\\0",
    ];
    for pattern in usual {
        assert!(validate_pattern(pattern).is_ok(), "{pattern:?} is valid");
        assert!(documented(pattern), "the document states {pattern:?}");
    }
    for pattern in usual.iter().chain(odd.iter()) {
        if documented(pattern) {
            assert!(
                validate_pattern(pattern).is_ok(),
                "the document states {pattern:?}, which the API refuses"
            );
        }
    }
}
