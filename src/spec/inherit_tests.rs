//! `from:` inheritance: what a variant takes from its parent, what it replaces, what it adds.

use std::path::Path;

use super::{Project, SpecError};
use crate::spec::Compression;

/// A project with empty layers `a`..`e` and the given variant files.
fn project(variants: &[(&str, &str)]) -> (tempfile::TempDir, Result<Project, SpecError>) {
    let d = tempfile::tempdir().unwrap();
    for l in ["a", "b", "c", "d", "e"] {
        let dir = d.path().join("layers").join(l);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("layer.yaml"), format!("description: layer {l}\n")).unwrap();
    }
    std::fs::create_dir_all(d.path().join("variants")).unwrap();
    for (name, text) in variants {
        std::fs::write(d.path().join("variants").join(format!("{name}.yaml")), text).unwrap();
    }
    let p = Project::load(d.path());
    (d, p)
}

fn loaded(variants: &[(&str, &str)]) -> Project {
    let (_d, p) = project(variants);
    p.unwrap_or_else(|e| panic!("project did not load: {e}"))
}

const PARENT: &str = "\
name: parent
layers: [a]
tags: [latest, stable]
compression: zstd
debian:
  suite: trixie
  components: [main]
  updates: false
config:
  env: {A: '1', SHARED: parent}
  labels: {l.parent: p, l.shared: parent}
  annotations: {a.parent: p, a.shared: parent}
  workdir: /parent
tests:
  - name: parent test
    run: 'true'
";

#[test]
fn tags_given_by_a_child_replace_the_inherited_tags() {
    let p = loaded(&[
        ("parent", PARENT),
        ("child", "from: parent\ntags: [edge]\n"),
        ("quiet", "from: parent\n"),
    ]);
    assert_eq!(p.variant("child").unwrap().tags, ["edge"]);
    assert_eq!(p.variant("quiet").unwrap().tags, ["latest", "stable"]);
}

#[test]
fn tests_are_appended_after_the_inherited_ones() {
    let p = loaded(&[
        ("parent", PARENT),
        (
            "child",
            "from: parent\ntests:\n  - name: child test\n    run: 'true'\n",
        ),
        (
            "grandchild",
            "from: child\ntests:\n  - name: grandchild test\n    run: 'true'\n",
        ),
    ]);
    let names = |k: &str| -> Vec<String> {
        p.variant(k)
            .unwrap()
            .tests
            .iter()
            .map(|t| t.name.clone())
            .collect()
    };
    assert_eq!(names("child"), ["parent test", "child test"]);
    assert_eq!(
        names("grandchild"),
        ["parent test", "child test", "grandchild test"]
    );
}

#[test]
fn labels_annotations_and_env_merge_key_by_key_with_the_child_winning() {
    let p = loaded(&[
        ("parent", PARENT),
        (
            "child",
            "from: parent\nconfig:\n  env: {B: '2', SHARED: child}\n  labels: {l.child: c, l.shared: child}\n  annotations: {a.child: c, a.shared: child}\n",
        ),
    ]);
    let c = &p.variant("child").unwrap().config;
    let pairs = |m: &std::collections::BTreeMap<String, String>| -> Vec<(String, String)> {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let own = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        pairs(&c.labels),
        own(&[("l.child", "c"), ("l.parent", "p"), ("l.shared", "child")])
    );
    assert_eq!(
        pairs(&c.annotations),
        own(&[("a.child", "c"), ("a.parent", "p"), ("a.shared", "child")])
    );
    assert_eq!(
        pairs(&c.env),
        own(&[("A", "1"), ("B", "2"), ("SHARED", "child")])
    );
    assert_eq!(
        c.workdir.as_deref(),
        Some("/parent"),
        "unset scalars are inherited"
    );
}

#[test]
fn top_layers_stay_above_the_layers_of_every_descendant() {
    let p = loaded(&[
        ("root", "name: root\nlayers: [a]\ntop_layers: [e]\n"),
        ("mid", "name: mid\nfrom: root\nlayers: [b]\n"),
        ("leaf", "name: leaf\nfrom: mid\nlayers: [c]\n"),
        (
            "own-top",
            "name: own-top\nfrom: mid\nlayers: [c]\ntop_layers: [d]\n",
        ),
    ]);
    assert_eq!(p.variant("root").unwrap().layers, ["a", "e"]);
    assert_eq!(p.variant("mid").unwrap().layers, ["a", "b", "e"]);
    assert_eq!(p.variant("leaf").unwrap().layers, ["a", "b", "c", "e"]);
    // A descendant's own top_layers replace the inherited list.
    assert_eq!(p.variant("own-top").unwrap().layers, ["a", "b", "c", "d"]);
}

#[test]
fn debian_settings_are_overridden_field_by_field() {
    let p = loaded(&[
        ("parent", PARENT),
        (
            "child",
            "from: parent\ndebian:\n  suite: forky\n  updates: true\n",
        ),
    ]);
    let d = &p.variant("child").unwrap().debian;
    assert_eq!(d.suite.as_deref(), Some("forky"));
    assert_eq!(d.updates, Some(true));
    assert_eq!(
        d.components.as_deref(),
        Some(&["main".to_string()][..]),
        "a field the child leaves out is inherited"
    );
    assert_eq!(p.variant("child").unwrap().compression, Compression::Zstd);
}

fn error_at(variants: &[(&str, &str)]) -> (String, std::path::PathBuf) {
    let (d, p) = project(variants);
    let e = p.expect_err("the project should be rejected").to_string();
    (e, d.path().to_path_buf())
}

#[test]
fn a_layer_repeated_through_inheritance_is_rejected_where_it_is_repeated() {
    let (e, root) = error_at(&[
        ("parent", PARENT),
        ("child", "from: parent\nlayers: [b, a]\n"),
    ]);
    let file = Path::new(&root).join("variants/child.yaml");
    assert_eq!(
        e,
        format!(
            "{}:2:13: field `layers`: layer `a` is listed twice",
            file.display()
        )
    );
}

#[test]
fn a_top_layer_also_listed_by_a_descendant_is_rejected() {
    let (e, _) = error_at(&[
        ("root", "name: root\nlayers: [a]\ntop_layers: [e]\n"),
        ("leaf", "name: leaf\nfrom: root\nlayers: [e]\n"),
    ]);
    assert!(e.contains("layer `e` is listed twice"), "{e}");
    assert!(
        e.contains("root.yaml:3:14"),
        "the repeated top layer's position: {e}"
    );
}

#[test]
fn inheritance_cycles_and_missing_parents_are_named() {
    let (e, _) = error_at(&[("x", "name: x\nfrom: y\n"), ("y", "name: y\nfrom: x\n")]);
    assert!(e.contains("inheritance cycle: x -> y -> x"), "{e}");
    let (e, _) = error_at(&[("x", "name: x\nfrom: nowhere\n")]);
    assert!(
        e.contains("x.yaml:2:7: field `from`: no variant `nowhere`"),
        "{e}"
    );
}
