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
