//! The access guard's answers in a service's OpenAPI document.
//!
//! Every route the guard can refuse documents what it may answer: `401`
//! and `403` on routes that need a token (when `API_TOKEN_FILE` is set),
//! `403` (another origin) and `415` (not JSON) on writes. No security
//! requirement is declared: the surface is open without a token file.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

use crate::access::OPEN_PATHS;

/// Adds the guard's answers, as JSON bodies of schema `error_schema` (the
/// service's error body component), to every operation of `doc`.
pub fn document_refusals(doc: &mut OpenApi, error_schema: &str) {
    let answer = |description: &str| -> RefOr<Response> {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(error_schema)))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let open = OPEN_PATHS.contains(&path.as_str());
        let reads = [&mut item.get, &mut item.head];
        for operation in reads.into_iter().flatten() {
            if !open {
                add(operation, "401", &answer);
                add(operation, "403", &answer);
            }
        }
        let writes = [
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in writes.into_iter().flatten() {
            add(operation, "401", &answer);
            add(operation, "403", &answer);
            add(operation, "415", &answer);
        }
    }
}

fn add(operation: &mut Operation, status: &str, answer: &impl Fn(&str) -> RefOr<Response>) {
    let description = match status {
        "401" => "no bearer token, or not a valid one (when API_TOKEN_FILE is set)",
        "403" => "the token's role may not do this, or the request comes from another origin",
        _ => "the body is not JSON",
    };
    operation
        .responses
        .responses
        .entry(status.into())
        .or_insert_with(|| answer(description));
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::{InfoBuilder, OpenApiBuilder, PathsBuilder};

    #[test]
    fn writes_and_closed_reads_document_the_refusals() {
        let operation = || OperationBuilder::new().build();
        let mut doc = OpenApiBuilder::new()
            .info(InfoBuilder::new().title("t").version("1").build())
            .paths(
                PathsBuilder::new()
                    .path("/orders", PathItem::new(HttpMethod::Get, operation()))
                    .path(
                        "/orders/{id}",
                        PathItem::new(HttpMethod::Delete, operation()),
                    )
                    .path("/healthz", PathItem::new(HttpMethod::Get, operation())),
            )
            .build();
        document_refusals(&mut doc, "ErrorBody");
        let codes = |path: &str, pick: fn(&PathItem) -> &Option<Operation>| -> Vec<String> {
            pick(&doc.paths.paths[path])
                .as_ref()
                .map(|o| o.responses.responses.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(codes("/orders", |p| &p.get), ["401", "403"]);
        assert_eq!(codes("/orders/{id}", |p| &p.delete), ["401", "403", "415"]);
        assert!(codes("/healthz", |p| &p.get).is_empty());
    }
}
