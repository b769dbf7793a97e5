//! The document states the rules it was made for, and each operation the answers and the
//! scope the server gives it.

use std::collections::BTreeSet;

use axum::http::Method;
use serde_json::{json, Value};
use shared::tasks::ValidationRules;

use super::document;
use crate::http::auth::{self, Scope};

fn rules() -> ValidationRules {
    ValidationRules {
        min_age_hours: 6.0,
        terminal_statuses: ["done", "failed"].map(String::from).into(),
        max_attempts_limit: 4,
        scope_columns: ["project_id", "team"].map(String::from).into(),
    }
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            out.push((method.clone(), path.clone(), operation));
        }
    }
    out
}

#[test]
fn parameters_state_the_deployments_rules() {
    let doc = document(&rules());
    let schemas = &doc["components"]["schemas"];
    for name in ["CleanupRunsParams", "CleanupTempFilesParams"] {
        let params = &schemas[name];
        assert_eq!(params["additionalProperties"], json!(false), "{name}");
        assert_eq!(params["required"], json!(["max_age_hours"]), "{name}");
        let properties = &params["properties"];
        assert_eq!(
            properties["max_age_hours"]["minimum"].as_f64(),
            Some(6.0),
            "{name}"
        );
        assert_eq!(
            properties["max_age_hours"]["maximum"].as_f64(),
            Some(876000.0),
            "{name}"
        );
        assert!(properties["max_age_hours"]["example"].as_f64().unwrap() >= 6.0);
        assert_eq!(properties["max_attempts"]["minimum"], json!(1), "{name}");
        assert_eq!(properties["max_attempts"]["maximum"], json!(4), "{name}");
    }
    let runs = &schemas["CleanupRunsParams"]["properties"];
    assert_eq!(runs["statuses"]["minItems"], json!(1));
    assert_eq!(runs["statuses"]["uniqueItems"], json!(true));
    assert_eq!(runs["statuses"]["items"]["enum"], json!(["done", "failed"]));
    assert_eq!(runs["batch_size"]["minimum"], json!(1));
    assert_eq!(runs["batch_size"]["maximum"], json!(10000));
    assert_eq!(runs["max_rows"]["minimum"], json!(1));
    assert_eq!(runs["max_rows"]["maximum"], json!(i64::MAX));
    let temp = &schemas["CleanupTempFilesParams"]["properties"];
    assert_eq!(temp["max_files"]["maximum"], json!(i64::MAX));
    assert_eq!(
        runs["scope"]["propertyNames"]["enum"],
        json!(["project_id", "team"])
    );
    assert_eq!(runs["scope"]["minProperties"], json!(1));
    assert_eq!(
        runs["scope"]["additionalProperties"]["maxLength"],
        json!(256)
    );
    let temp = &schemas["CleanupTempFilesParams"]["properties"];
    assert_eq!(temp["patterns"]["minItems"], json!(1));
    assert_eq!(temp["patterns"]["maxItems"], json!(32));
    assert_eq!(schemas["GlobPattern"]["maxLength"], json!(256));
    assert_eq!(temp["root"]["pattern"], json!("^[A-Za-z0-9_.-]{1,64}$"));
    assert_eq!(temp["max_files"]["minimum"], json!(1));

    // Without scope columns, a scope can only be left out.
    let none = ValidationRules {
        scope_columns: BTreeSet::new(),
        ..rules()
    };
    let doc = document(&none);
    assert_eq!(
        doc["components"]["schemas"]["CleanupRunsParams"]["properties"]["scope"]["type"],
        json!("null")
    );
}

#[test]
fn query_header_and_path_parameters_are_constrained() {
    let doc = document(&rules());
    let parameter = |path: &str, method: &str, name: &str| -> Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))["schema"]
            .clone()
    };
    let limit = parameter("/tasks", "get", "limit");
    assert_eq!(
        (limit["minimum"].clone(), limit["maximum"].clone()),
        (json!(1), json!(500))
    );
    assert_eq!(limit["type"], json!("integer"), "a parameter is never null");
    assert_eq!(
        parameter("/tasks", "get", "status")["$ref"],
        json!("#/components/schemas/TaskStatus")
    );
    assert_eq!(
        parameter("/tasks", "get", "cursor")["format"],
        json!("uuid")
    );
    assert_eq!(
        parameter("/workers", "get", "status")["$ref"],
        json!("#/components/schemas/WorkerState")
    );
    let key = parameter("/maintenance/cleanup-runs", "post", "Idempotency-Key");
    assert_eq!(key["pattern"], json!("^(?!schedule:)[!-~]{1,255}$"));
    assert_eq!(
        parameter("/schedules/{name}", "put", "name")["$ref"],
        json!("#/components/schemas/ScheduleName")
    );
}

#[test]
fn every_operation_lists_its_answers_as_problems_and_the_scope_it_needs() {
    let doc = document(&rules());
    let mut protected = 0;
    for (method, path, operation) in operations(&doc) {
        let responses = &operation["responses"];
        let mut expected = vec!["408", "500"];
        if let Some(security) = operation["security"].as_array() {
            protected += 1;
            expected.extend(["401", "403", "503"]);
            let scope = auth::needed(&method.to_uppercase().parse::<Method>().unwrap(), &path);
            assert_eq!(
                security,
                &vec![json!({"bearer": [scope.as_str()]})],
                "{method} {path} states the scope the server asks for"
            );
            assert!(scope == Scope::Read || method != "get");
        }
        if operation.get("requestBody").is_some() {
            expected.extend(["400", "413", "415", "422"]);
        }
        if operation["parameters"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
        {
            expected.push("400");
        }
        for status in expected {
            let content = &responses[status]["content"];
            assert_eq!(
                content["application/problem+json"]["schema"]["$ref"],
                json!("#/components/schemas/Problem"),
                "{method} {path} lists {status} as a problem"
            );
        }
    }
    assert!(protected >= 14, "{protected} protected operations");
    // Every `parameters` is a list (an index into the document must not have added nulls).
    assert!(
        !doc.to_string().contains(":null"),
        "no null in the document"
    );
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["scheme"], json!("bearer"));
    assert!(scheme["description"]
        .as_str()
        .unwrap()
        .contains("`dry-run`"));
}

#[test]
fn a_schedule_body_is_one_of_its_kinds() {
    let doc = document(&rules());
    let schemas = &doc["components"]["schemas"];
    for (name, with_name) in [("NewSchedule", true), ("ScheduleBody", false)] {
        let variants = schemas[name]["oneOf"].as_array().unwrap();
        assert_eq!(variants.len(), 2);
        for variant in variants {
            assert_eq!(variant["additionalProperties"], json!(false));
            let kind = variant["properties"]["kind"]["enum"][0].as_str().unwrap();
            let params = if kind == "cleanup_runs" {
                "CleanupRunsParams"
            } else {
                "CleanupTempFilesParams"
            };
            assert_eq!(
                variant["properties"]["params"]["allOf"][0]["$ref"],
                json!(format!("#/components/schemas/{params}"))
            );
            let required = variant["required"].as_array().unwrap();
            assert_eq!(required.contains(&json!("name")), with_name, "{name}");
            assert_eq!(
                variant["properties"].get("name").is_some(),
                with_name,
                "{name}"
            );
        }
    }
    assert!(schemas["TimeZone"]["enum"]
        .as_array()
        .unwrap()
        .contains(&json!("Europe/Berlin")));
    assert!(schemas["CronExpression"]["pattern"].as_str().unwrap().len() > 100);
    assert_eq!(
        doc["paths"]["/schedules"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"],
        json!("#/components/schemas/NewSchedule")
    );
}
