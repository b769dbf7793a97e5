//! The answers every route shares, listed on each operation once, here: the token check's
//! (401, 403), the JSON body's (400, 413, 415, 422), a malformed parameter's (400), the
//! ledger's (503), and those any request can get (408 past the time limit, 500 on a bug).
//! All are problem documents. An operation's own entry for a status, if it has one, stays.

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, Response, ResponseBuilder};
use utoipa::Modify;

use crate::http::error::PROBLEM_CONTENT_TYPE;

pub struct Answers;

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_CONTENT_TYPE,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

const SCOPES: &str = "A bearer token from `API_TOKENS`. Each token has a scope, and each scope \
includes the ones before it: `read` (every `GET`), `dry-run` (enqueue a cleanup with \
`\"dry_run\": true`), `enqueue` (enqueue any cleanup), `admin` (everything else). Each \
operation's security requirement names the scope it needs; a token whose scope is below \
it gets a 403 that names the scope.";

impl Modify for Answers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(SCOPES))
                    .build(),
            ),
        );
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let body = operation.request_body.is_some();
                let parameters = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let mut answers = vec![
                    ("408", "The request took longer than the server allows"),
                    ("500", "A bug: the cause is logged, not shown"),
                ];
                if secured {
                    answers.extend([
                        ("401", "Missing or invalid bearer token"),
                        (
                            "403",
                            "The token's scope does not allow this request (the detail names \
                             the scope needed)",
                        ),
                        (
                            "503",
                            "The ledger is unavailable; nothing was stored (Retry-After). \
                             On an enqueue, rarely, the outcome is unknown instead (type \
                             outcome-unknown): the connection failed under the statement",
                        ),
                    ]);
                }
                if body {
                    answers.extend([
                        ("400", "Malformed JSON, or a malformed parameter"),
                        ("413", "The body is larger than MAX_BODY_BYTES"),
                        ("415", "The body is not declared as application/json"),
                        (
                            "422",
                            "Not a JSON object, or a field missing, unknown, of the wrong \
                             type or out of range (`field` names it when known)",
                        ),
                    ]);
                }
                if parameters {
                    answers.push(("400", "A malformed parameter"));
                }
                let responses = &mut operation.responses.responses;
                for (status, description) in answers {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem(description).into());
                }
            }
        }
    }
}

/// Path, query and header parameters are text: `null` is not one of their values (an
/// optional one is left out instead).
pub(super) fn parameters_are_never_null(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut() {
            // (`get_mut`: indexing would add a `null` where there is none.)
            let Some(parameters) = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for parameter in parameters {
                let schema = &mut parameter["schema"];
                // `Option<T>` of a named type: `oneOf: [{"type": "null"}, T]`.
                if let Some(branches) = schema["oneOf"].as_array() {
                    let rest: Vec<&Value> =
                        branches.iter().filter(|b| b["type"] != "null").collect();
                    if rest.len() == 1 {
                        *schema = rest[0].clone();
                    }
                }
                if let Some(types) = schema["type"].as_array() {
                    let types: Vec<Value> =
                        types.iter().filter(|t| *t != "null").cloned().collect();
                    schema["type"] = if types.len() == 1 {
                        types[0].clone()
                    } else {
                        Value::Array(types)
                    };
                }
            }
        }
    }
}
