//! The placeholders a rollout fills into activation and rollback commands and into probes:
//! `{target}`, `{previous}` and `{host}`.

/// The placeholders of activation and rollback commands and of probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Substitutions {
    /// This agent's host name: `{host}`.
    pub host: String,
    /// `{target}`.
    pub target: String,
    /// `{previous}`; empty when the host ran nothing before.
    pub previous: Option<String>,
}

impl Substitutions {
    /// `text` with each `{target}`, `{previous}` and `{host}` replaced, in one pass: a value
    /// that itself contains a placeholder is not replaced again. Other braces are left alone.
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open..];
            let value = [
                ("{target}", self.target.as_str()),
                ("{previous}", self.previous.as_deref().unwrap_or("")),
                ("{host}", &self.host),
            ]
            .into_iter()
            .find(|(placeholder, _)| after.starts_with(placeholder));
            match value {
                Some((placeholder, value)) => {
                    out.push_str(value);
                    rest = &after[placeholder.len()..];
                }
                None => {
                    out.push('{');
                    rest = &after[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    pub fn apply_all(&self, argv: &[String]) -> Vec<String> {
        argv.iter().map(|arg| self.apply(arg)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_once() {
        let s = Substitutions { host: "h1".into(), target: "v2".into(), previous: Some("v1".into()) };
        assert_eq!(s.apply("switch --to {target} --from {previous} on {host}"), "switch --to v2 --from v1 on h1");
        assert_eq!(s.apply("{target}{target}"), "v2v2");
        assert_eq!(s.apply("{other} {target"), "{other} {target", "unknown or unclosed braces stay");
        assert_eq!(s.apply("{{host}}"), "{h1}");
        let none = Substitutions { previous: None, ..s.clone() };
        assert_eq!(none.apply("[{previous}]"), "[]", "no previous: empty");
        let tricky = Substitutions { target: "{host}".into(), ..s };
        assert_eq!(tricky.apply("{target}"), "{host}", "a value is not substituted again");
        assert_eq!(tricky.apply_all(&["a-{host}".into(), "{target}".into()]), vec!["a-h1".to_string(), "{host}".into()]);
    }
}
