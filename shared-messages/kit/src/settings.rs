//! Settings helpers: secrets from files.
//!
//! Kubernetes and compose mount secrets as files; an environment variable
//! shows up in `ps e`, crash dumps and `kubectl describe`. Each secret
//! setting `NAME` may therefore be given as `NAME_FILE`, a path whose
//! content (trimmed) is the value.

/// The value of `name`, or the content of the file `name_FILE` names.
/// Setting both is an error (which one would win is a guess). `lookup`
/// reads the environment (a map in tests).
pub fn value_or_file(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<String>, String> {
    let file_var = format!("{name}_FILE");
    match (lookup(name), lookup(&file_var)) {
        (Some(_), Some(_)) => Err(format!("set {name} or {file_var}, not both")),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => {
            let path = path.trim();
            let content = std::fs::read_to_string(path)
                .map_err(|e| format!("{file_var}: cannot read {path}: {e}"))?;
            let value = content.trim();
            if value.is_empty() {
                return Err(format!("{file_var}: {path} is empty"));
            }
            Ok(Some(value.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).into(), v.clone())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_file_gives_the_value_trimmed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("amqp-url");
        std::fs::write(&path, "amqp://u:p@mq/%2f\n").expect("write");
        let env = lookup(&[("AMQP_URL_FILE", path.display().to_string())]);
        assert_eq!(
            value_or_file(&env, "AMQP_URL"),
            Ok(Some("amqp://u:p@mq/%2f".into()))
        );
        let env = lookup(&[("AMQP_URL", "amqp://direct".into())]);
        assert_eq!(
            value_or_file(&env, "AMQP_URL"),
            Ok(Some("amqp://direct".into()))
        );
        assert_eq!(value_or_file(&lookup(&[]), "AMQP_URL"), Ok(None));
    }

    #[test]
    fn both_or_a_missing_file_is_an_error() {
        let env = lookup(&[
            ("AMQP_URL", "amqp://x".into()),
            ("AMQP_URL_FILE", "/x".into()),
        ]);
        assert!(value_or_file(&env, "AMQP_URL")
            .expect_err("both")
            .contains("not both"));
        let env = lookup(&[("STORE_URL_FILE", "/nonexistent/secret".into())]);
        assert!(value_or_file(&env, "STORE_URL")
            .expect_err("missing")
            .contains("STORE_URL_FILE"));
    }
}
