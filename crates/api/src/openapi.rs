//! The OpenAPI 3.1 document, generated from the route table in `routes`.

use serde_json::{json, Map, Value};

/// One route as the table in `routes` declares it.
pub(crate) struct RouteDoc {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    /// `read`, `write`, `admin`, or `none` (no token needed).
    pub(crate) role: &'static str,
    pub(crate) ok: u16,
    pub(crate) summary: &'static str,
}

pub(crate) fn document(routes: &[RouteDoc]) -> Value {
    let mut paths = Map::new();
    for r in routes {
        // actix's `{param:regex}` is OpenAPI's `{param}`.
        let path = r
            .path
            .split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|p| p.split_once(':')) {
                    Some((name, _)) => format!("{{{name}}}"),
                    None => s.to_owned(),
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        let full = format!("{}{path}", crate::routes::API_PREFIX);
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut responses = Map::new();
        responses.insert(r.ok.to_string(), json!({"description": "success"}));
        for (code, what) in [
            ("400", "invalid input; the error names the field"),
            ("401", "missing or unknown token"),
            ("403", "the token's role is too low"),
            ("404", "not found"),
            ("409", "conflicts with the current state"),
            ("422", "well-formed but not applicable"),
            ("503", "Redis is unavailable"),
        ] {
            responses.insert(code.into(), json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        }
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{}{}", r.method, path.replace(['/', '{', '}', '.'], "_")),
            "parameters": params,
            "responses": responses,
            "x-kiln-role": r.role,
        });
        if r.role == "none" {
            op["security"] = json!([]);
        }
        paths
            .entry(full)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|m| m.insert(r.method.to_owned(), op));
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Kiln API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}
            }}}}
        }
    })
}
