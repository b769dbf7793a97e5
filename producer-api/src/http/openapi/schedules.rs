//! The schedule's schemas, completed with what the types alone cannot say: a schedule's
//! `params` are those of its `kind` (one variant per kind), `cron` is a calendar the API
//! accepts ([`super::cron`]), `timezone` one of the IANA zones it knows, and names follow
//! [`crate::http::schedules::check_name`]. `POST /schedules` needs a `name`; `PUT` takes it
//! from the path (a body may repeat it, and nothing else, so the schema leaves it out).

use serde_json::{json, Map, Value};
use shared::tasks::TaskKind;

/// [`crate::http::schedules::check_name`] as a regular expression.
pub const NAME_REGEX: &str = "^[a-z0-9][a-z0-9._-]{0,62}$";

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

pub(super) fn apply(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    let zones: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
    schemas["TimeZone"] = json!({
        "type": "string",
        "description": "An IANA time zone, as the time zone database names it (e.g. `UTC`, \
                        `Europe/Berlin`).",
        "enum": zones,
    });
    schemas["CronExpression"] = json!({
        "type": "string",
        "description": "Five fields (minute hour day-of-month month day-of-week: `*`, lists, \
                        ranges, steps, `JAN`-`DEC`, `SUN`-`SAT`, `L` and `15W` in the day of the \
                        month, `5L` and `5#2` in the day of the week; when both day fields are \
                        restricted either one matching suffices) or `@hourly`, `@daily`, \
                        `@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`. A calendar \
                        that never fires (`0 0 30 2 *`) is refused. The pattern states the \
                        calendars the API accepts, in one spelling each: the API also takes \
                        lower-case names, leading zeros, `?` and several spaces.",
        "pattern": super::cron::regex(),
    });
    schemas["ScheduleName"] = json!({
        "type": "string",
        "description": "1 to 63 lowercase letters, digits, `.`, `_` or `-`, starting with a \
                        letter or digit.",
        "minLength": 1,
        "maxLength": 63,
        "pattern": NAME_REGEX,
    });
    let generated = schemas["ScheduleBody"].clone();
    let variants = |with_name: bool| -> Vec<Value> {
        [
            (TaskKind::CleanupRuns, "CleanupRunsParams"),
            (TaskKind::CleanupTempFiles, "CleanupTempFilesParams"),
        ]
        .into_iter()
        .map(|(kind, params)| variant(&generated, kind, params, with_name))
        .collect()
    };
    schemas["ScheduleBody"] = json!({
        "description": "A schedule, as `PUT /schedules/{name}` takes it: what to run (`kind`, \
                        and `params` checked exactly as a POST of that kind) and when (`cron` \
                        in `timezone`). The name comes from the path (the body may repeat it).",
        "oneOf": variants(false),
    });
    schemas["NewSchedule"] = json!({
        "description": "A schedule, as `POST /schedules` takes it: a `name`, what to run \
                        (`kind`, and `params` checked exactly as a POST of that kind) and when \
                        (`cron` in `timezone`).",
        "oneOf": variants(true),
    });
    doc["paths"]["/schedules"]["post"]["requestBody"]["content"]["application/json"]["schema"] =
        schema_ref("NewSchedule");
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        if !path.contains("{name}") {
            continue;
        }
        for operation in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            let parameters = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut);
            for parameter in parameters.into_iter().flatten() {
                if parameter["in"] == "path" && parameter["name"] == "name" {
                    parameter["schema"] = schema_ref("ScheduleName");
                }
            }
        }
    }
}

/// The schedule of one kind: the generated schema's fields, with `kind` fixed, `params`
/// that kind's, `cron`, `timezone` and `name` stated exactly.
fn variant(generated: &Value, kind: TaskKind, params: &str, with_name: bool) -> Value {
    let mut properties: Map<String, Value> = generated["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    properties.insert(
        "kind".into(),
        json!({"type": "string", "enum": [kind.as_str()]}),
    );
    let description = |field: &str| properties[field]["description"].clone();
    let params_description = description("params");
    let cron_description = description("cron");
    let zone_description = description("timezone");
    properties.insert(
        "params".into(),
        json!({"allOf": [schema_ref(params)], "description": params_description}),
    );
    properties.insert(
        "cron".into(),
        json!({"allOf": [schema_ref("CronExpression")], "description": cron_description}),
    );
    properties.insert(
        "timezone".into(),
        json!({"oneOf": [{"type": "null"}, schema_ref("TimeZone")], "description": zone_description}),
    );
    let mut required = vec!["kind", "params", "cron"];
    if with_name {
        properties.insert("name".into(), schema_ref("ScheduleName"));
        required.insert(0, "name");
    } else {
        properties.remove("name");
    }
    json!({
        "type": "object",
        "title": format!("{kind} schedule"),
        "required": required,
        "properties": properties,
        "additionalProperties": false,
    })
}
