//! The `devcontainer.metadata` image label, read by the devcontainers CLI and Coder's
//! envbuilder, and the image env recovered from it when the config has no `Env`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::RuntimeConfig;
use crate::spec::ImageConfigSpec;

/// The label's key.
pub const LABEL: &str = "devcontainer.metadata";

/// The image env a runtime applies: the config's `Env`, or, when the config has none, the
/// label's `containerEnv` (what `config.env_file` images carry in a file instead).
pub fn effective_env(rc: &RuntimeConfig) -> BTreeMap<String, String> {
    if let Some(env) = rc.env().as_ref().filter(|e| !e.is_empty()) {
        return env
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                (k.to_string(), v.to_string())
            })
            .collect();
    }
    rc.labels()
        .as_ref()
        .and_then(|l| l.get(LABEL))
        .and_then(|v| container_env(v))
        .unwrap_or_default()
}

/// One entry of the label's JSON array (the fields hakim writes).
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// User tools log in as.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub remote_user: Option<String>,
    /// User the container's main process runs as.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container_user: Option<String>,
    /// Environment of the container.
    #[serde(default)]
    pub container_env: BTreeMap<String, String>,
    /// Whether tools may change the remote user's UID to the host user's.
    #[serde(
        rename = "updateRemoteUserUID",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub update_remote_user_uid: Option<bool>,
}

/// The label value for a variant's config: a JSON array with one object.
pub fn label(spec: &ImageConfigSpec) -> String {
    let container_user = spec
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into());
    let m = Metadata {
        remote_user: spec.remote_user.clone(),
        container_user: Some(container_user),
        container_env: spec.env.clone(),
        update_remote_user_uid: Some(true),
    };
    serde_json::to_string(&[m]).expect("metadata serializes")
}

/// The `containerEnv` of a `devcontainer.metadata` value (later entries win, as the
/// devcontainers CLI merges them); `None` when the value is not such an array.
pub fn container_env(value: &str) -> Option<BTreeMap<String, String>> {
    let items: Vec<Metadata> = serde_json::from_str(value).ok()?;
    Some(items.into_iter().flat_map(|m| m.container_env).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_users_and_env_and_reads_back() {
        let spec = ImageConfigSpec {
            env: BTreeMap::from([("LANG".into(), "C.UTF-8".into())]),
            remote_user: Some("dev".into()),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&label(&spec)).unwrap();
        assert_eq!(v[0]["remoteUser"], "dev");
        assert_eq!(v[0]["containerUser"], "root");
        assert_eq!(v[0]["updateRemoteUserUID"], true);
        assert_eq!(v[0]["containerEnv"]["LANG"], "C.UTF-8");
        assert_eq!(container_env(&label(&spec)).unwrap(), spec.env);
    }

    #[test]
    fn container_env_rejects_non_arrays() {
        assert_eq!(container_env("{\"containerEnv\":{}}"), None);
        assert_eq!(container_env("not json"), None);
    }
}
