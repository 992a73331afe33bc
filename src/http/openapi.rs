//! `GET /openapi.json`: an OpenAPI 3 description of the public and admin
//! routes, written by hand next to the router so the two change together.

use axum::Json;
use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn page(item: &str) -> Value {
    json!({"type": "object", "required": ["items", "next_cursor"], "properties": {
        "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}},
        "next_cursor": {"type": ["string", "null"]}}})
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})
}

pub fn document() -> Value {
    let admin = json!([{"bearer": []}]);
    let unauthorized = error_response("missing or wrong admin token");
    let list_params = |extra: &[(&str, &str)]| {
        let mut p: Vec<Value> = extra.iter().map(|(n, d)| query(n, d)).collect();
        p.push(json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}}));
        p.push(query("cursor", "next_cursor of the previous page"));
        p
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Inlet", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Inbound messaging webhook gateway. See SPEC.md for the full contract."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "Received": {"type": "object", "required": ["status", "accepted", "duplicates"], "properties": {
                    "status": {"const": "received"}, "accepted": {"type": "integer"}, "duplicates": {"type": "integer"}}},
                "Message": {"type": "object", "properties": {
                    "id": {"type": "string"}, "source": {"type": "string"}, "provider": {"type": "string"},
                    "external_id": {"type": "string"}, "channel": {"type": "string"},
                    "from": {"type": ["string", "null"]}, "to": {"type": ["string", "null"]},
                    "text": {"type": ["string", "null"]}, "media": {"type": "array"},
                    "received_at": {"type": "string", "format": "date-time"},
                    "conversation_id": {"type": ["string", "null"]}, "intent": {"type": ["object", "null"]},
                    "raw": {}, "status": {"enum": ["pending", "done", "dead"]}}},
                "DeadLetter": {"type": "object", "properties": {"id": {"type": "string"}, "message_id": {"type": "string"},
                    "source": {"type": "string"}, "action": {"type": "string"}, "error": {"type": ["string", "null"]}, "at": {"type": "string"}}},
                "Rejection": {"type": "object", "properties": {"id": {"type": "string"}, "at": {"type": "string"},
                    "source": {"type": "string"}, "status": {"type": "integer"}, "code": {"type": "string"},
                    "headers": {"type": "object"}, "body": {"type": "string"}}},
            }
        },
        "paths": {
            "/hooks/{source}": {
                "parameters": [{"name": "source", "in": "path", "required": true, "schema": {"type": "string"}}],
                "post": {"summary": "Receive a provider webhook (the provider's native payload)",
                    "requestBody": {"required": true, "content": {"application/json": {}, "application/x-www-form-urlencoded": {}}},
                    "responses": {
                        "200": {"description": "committed durably", "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Received"}},
                            "text/xml": {"schema": {"type": "string"}}}},
                        "400": error_response("invalid_payload"), "401": error_response("invalid_signature"),
                        "404": error_response("unknown_source"), "413": error_response("payload_too_large"),
                        "415": error_response("unsupported_media_type"),
                        "503": error_response("unavailable: nothing acknowledged, retry after Retry-After")}},
                "get": {"summary": "Verification handshake (WhatsApp Cloud)",
                    "parameters": [query("hub.mode", "subscribe"), query("hub.verify_token", "the configured token"), query("hub.challenge", "echoed back")],
                    "responses": {"200": {"description": "the challenge", "content": {"text/plain": {}}},
                        "403": error_response("verification_failed"), "404": error_response("unknown_source"),
                        "405": error_response("method_not_allowed")}}
            },
            "/health": {"get": {"summary": "Liveness from memory", "responses": {"200": {"description": "ok",
                "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/ready": {"get": {"summary": "The store accepts writes", "responses": {
                "200": {"description": "ready"}, "503": error_response("unavailable")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}},
            "/v1/messages": {"get": {"security": admin, "parameters": list_params(&[("source", "source name"), ("status", "pending | done | dead"), ("intent", "intent label"), ("contact", "from number")]),
                "responses": {"200": {"description": "newest first", "content": {"application/json": {"schema": page("Message")}}}, "401": unauthorized}}},
            "/v1/messages/{id}": {"get": {"security": admin,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "message with status, events and attempts"}, "401": unauthorized, "404": error_response("not_found")}}},
            "/v1/messages/{id}/replay": {"post": {"security": admin,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {"only_failed": {"type": "boolean"}}}}}},
                "responses": {"200": {"description": "{\"replayed\":N}"}, "401": unauthorized, "404": error_response("not_found")}}},
            "/v1/dead-letters": {"get": {"security": admin, "parameters": list_params(&[("source", "source name"), ("action", "action name")]),
                "responses": {"200": {"description": "newest first", "content": {"application/json": {"schema": page("DeadLetter")}}}, "401": unauthorized}}},
            "/v1/dead-letters/replay": {"post": {"security": admin,
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {"source": {"type": "string"}, "action": {"type": "string"}}}}}},
                "responses": {"200": {"description": "{\"replayed\":N}"}, "401": unauthorized}}},
            "/v1/rejections": {"get": {"security": admin, "parameters": list_params(&[("source", "source name")]),
                "responses": {"200": {"description": "newest first", "content": {"application/json": {"schema": page("Rejection")}}}, "401": unauthorized}}}
        }
    })
}

pub async fn serve() -> Json<Value> {
    Json(document())
}
