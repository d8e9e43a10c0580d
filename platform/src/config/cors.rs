//! The `cors` section: which browser origins may call the service from
//! their pages (gRPC-Web and Connect), by Cross-Origin Resource Sharing.

use serde::{Deserialize, Serialize};
use serde_with::{DurationSeconds, serde_as};
use std::time::Duration;

#[serde_as]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins (`https://shop.example`) whose pages may call the service.
    /// Empty, the default: none; a browser then refuses a page of another
    /// origin the answer. `*` (any origin) is refused in production.
    pub allowed_origins: Vec<String>,
    /// How long a browser may keep a preflight's answer (`max_age_secs`).
    #[serde(rename = "max_age_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub max_age: Duration,
}

impl Default for CorsSettings {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_age: Duration::from_secs(600),
        }
    }
}

impl CorsSettings {
    /// Any origin (`*`).
    pub fn any(&self) -> bool {
        self.allowed_origins.iter().any(|o| o == "*")
    }

    /// Adds this section's problems, each naming its key.
    pub fn validate(&self, production: bool, problems: &mut Vec<String>) {
        if self.any() {
            if production {
                problems.push(
                    "cors.allowed_origins: \"*\" lets every site's pages call the service; name the origins in production"
                        .into(),
                );
            }
            return;
        }
        for origin in &self.allowed_origins {
            let parsed = url::Url::parse(origin).ok();
            let is_origin = parsed.as_ref().is_some_and(|url| {
                matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some()
                    && url.path() == "/"
                    && url.query().is_none()
                    && url.fragment().is_none()
                    && url.username().is_empty()
                    && !origin.ends_with('/')
            });
            if !is_origin {
                problems.push(format!(
                    "cors.allowed_origins: {origin:?} is not an origin (scheme://host[:port], nothing after)"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(origins: &[&str], production: bool) -> Vec<String> {
        let settings = CorsSettings {
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        };
        let mut problems = Vec::new();
        settings.validate(production, &mut problems);
        problems
    }

    #[test]
    fn origins_are_checked_and_any_origin_is_refused_in_production() {
        assert!(problems(&[], true).is_empty());
        assert!(problems(&["https://shop.example", "http://localhost:5173"], true).is_empty());
        assert!(problems(&["*"], false).is_empty());
        assert_eq!(problems(&["*"], true).len(), 1);
        for bad in [
            "shop.example",
            "https://shop.example/",
            "https://shop.example/page",
            "ftp://shop.example",
        ] {
            assert_eq!(problems(&[bad], false).len(), 1, "{bad}");
        }
    }
}
