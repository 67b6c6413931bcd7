//! Package relationship fields: Depends, Pre-Depends, Recommends, Conflicts, Breaks, Provides.

use std::fmt;

use super::version::Version;

/// A version relation operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `<<`
    Lt,
    /// `<=` (also the obsolete `<`)
    Le,
    /// `=`
    Eq,
    /// `>=` (also the obsolete `>`)
    Ge,
    /// `>>`
    Gt,
}

impl Op {
    /// Whether `have` satisfies `have OP want`.
    pub fn matches(self, have: &Version, want: &Version) -> bool {
        use std::cmp::Ordering::*;
        let o = have.cmp(want);
        match self {
            Op::Lt => o == Less,
            Op::Le => o != Greater,
            Op::Eq => o == Equal,
            Op::Ge => o != Less,
            Op::Gt => o == Greater,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        })
    }
}

/// An architecture qualifier after a package name (`foo:any`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ArchQual {
    /// `:any` — any architecture, if the target is `Multi-Arch: allowed`.
    Any,
    /// `:native` — the native architecture.
    Native,
    /// `:<arch>` — one named architecture.
    Arch(String),
}

/// One alternative of a dependency: a name, optional arch qualifier and version constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// Package (or virtual package) name.
    pub name: String,
    /// Architecture qualifier, if any.
    pub arch_qual: Option<ArchQual>,
    /// Version constraint, if any.
    pub constraint: Option<(Op, Version)>,
}

impl Relation {
    /// Whether a package version satisfies this relation's version constraint.
    pub fn version_matches(&self, have: &Version) -> bool {
        self.constraint
            .as_ref()
            .is_none_or(|(op, want)| op.matches(have, want))
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        match &self.arch_qual {
            Some(ArchQual::Any) => f.write_str(":any")?,
            Some(ArchQual::Native) => f.write_str(":native")?,
            Some(ArchQual::Arch(a)) => write!(f, ":{a}")?,
            None => {}
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({op} {v})")?;
        }
        Ok(())
    }
}

/// One dependency: alternatives separated by `|`, any of which satisfies it.
pub type Dependency = Vec<Relation>;

/// Render a dependency as `a (>= 1) | b`.
pub fn display_dependency(dep: &[Relation]) -> String {
    dep.iter()
        .map(Relation::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// One `Provides` entry: a virtual name and an optional `(= version)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provide {
    /// The provided (virtual) name.
    pub name: String,
    /// The provided version, if the entry is versioned.
    pub version: Option<Version>,
}

/// A relationship field that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid relationship `{text}`: {reason}")]
pub struct RelationError {
    /// The offending part of the field.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

fn rel_err(text: &str, reason: impl Into<String>) -> RelationError {
    RelationError {
        text: text.trim_ascii().to_string(),
        reason: reason.into(),
    }
}

/// Parse a Depends-style field for target architecture `arch`.
///
/// Alternatives whose `[arch list]` excludes `arch` are dropped, and so are dependencies
/// left without alternatives. Build profiles `<...>` are evaluated with no profile active.
pub fn parse_dependencies(text: &str, arch: &str) -> Result<Vec<Dependency>, RelationError> {
    let mut out = Vec::new();
    for group in text.split(',') {
        if group.trim_ascii().is_empty() {
            // Tolerate a trailing comma, as dpkg-dev's own output sometimes has.
            continue;
        }
        let mut alts = Vec::new();
        for alt in group.split('|') {
            if alt.trim_ascii().is_empty() {
                return Err(rel_err(group, "empty alternative"));
            }
            if let Some(r) = parse_relation(alt, arch)? {
                alts.push(r);
            }
        }
        if !alts.is_empty() {
            out.push(alts);
        }
    }
    Ok(out)
}

/// Parse a Provides field (`name`, `name (= version)`, comma separated).
pub fn parse_provides(text: &str) -> Result<Vec<Provide>, RelationError> {
    let mut out = Vec::new();
    for item in text.split(',') {
        if item.trim_ascii().is_empty() {
            continue;
        }
        let (rest, name) =
            take_name(item.trim_ascii_start()).ok_or_else(|| rel_err(item, "missing name"))?;
        let rest = rest.trim_ascii_start();
        let (rest, version) = if let Some(inner) = rest.strip_prefix('(') {
            let (inner, after) = inner
                .split_once(')')
                .ok_or_else(|| rel_err(item, "unclosed `(`"))?;
            let inner = inner.trim_ascii();
            let v = inner
                .strip_prefix('=')
                .ok_or_else(|| rel_err(item, "Provides only allows `=` versions"))?;
            (after, Some(parse_version(v.trim_ascii(), item)?))
        } else {
            (rest, None)
        };
        if !rest.trim_ascii().is_empty() {
            return Err(rel_err(item, "unexpected trailing text"));
        }
        out.push(Provide {
            name: name.to_string(),
            version,
        });
    }
    Ok(out)
}

/// Whether Debian architecture `arch` matches `pattern` (`amd64`, `any`, `linux-any`, `any-amd64`).
pub fn arch_matches(arch: &str, pattern: &str) -> bool {
    if pattern == "any" || pattern == arch {
        return true;
    }
    let split = |a: &str| -> (String, String) {
        match a.split_once('-') {
            Some((os, cpu)) => (os.to_string(), cpu.to_string()),
            None => ("linux".to_string(), a.to_string()),
        }
    };
    let (os, cpu) = split(arch);
    let (pos, pcpu) = split(pattern);
    (pos == "any" || pos == os) && (pcpu == "any" || pcpu == cpu)
}

fn take_name(s: &str) -> Option<(&str, &str)> {
    let end = s
        .bytes()
        .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-' | b'_')))
        .unwrap_or(s.len());
    (end > 0).then(|| (&s[end..], &s[..end]))
}

fn parse_version(text: &str, whole: &str) -> Result<Version, RelationError> {
    text.parse()
        .map_err(|e: super::version::VersionError| rel_err(whole, e.to_string()))
}

fn parse_relation(alt: &str, arch: &str) -> Result<Option<Relation>, RelationError> {
    let s = alt.trim_ascii_start();
    let (mut rest, name) = take_name(s).ok_or_else(|| rel_err(alt, "missing package name"))?;
    let arch_qual = if let Some(q) = rest.strip_prefix(':') {
        let end = q
            .bytes()
            .position(|c| !(c.is_ascii_alphanumeric() || c == b'-'))
            .unwrap_or(q.len());
        let qual = &q[..end];
        rest = &q[end..];
        Some(match qual {
            "" => return Err(rel_err(alt, "empty architecture qualifier")),
            "any" => ArchQual::Any,
            "native" => ArchQual::Native,
            other => ArchQual::Arch(other.to_string()),
        })
    } else {
        None
    };
    rest = rest.trim_ascii_start();
    let constraint = if let Some(inner) = rest.strip_prefix('(') {
        let (inner, after) = inner
            .split_once(')')
            .ok_or_else(|| rel_err(alt, "unclosed `(`"))?;
        rest = after.trim_ascii_start();
        let inner = inner.trim_ascii();
        let op_len = inner
            .bytes()
            .position(|c| !matches!(c, b'<' | b'>' | b'='))
            .unwrap_or(inner.len());
        let op = match &inner[..op_len] {
            "<<" => Op::Lt,
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            other => return Err(rel_err(alt, format!("unknown operator `{other}`"))),
        };
        Some((op, parse_version(inner[op_len..].trim_ascii(), alt)?))
    } else {
        None
    };
    let mut keep = true;
    if let Some(inner) = rest.strip_prefix('[') {
        let (list, after) = inner
            .split_once(']')
            .ok_or_else(|| rel_err(alt, "unclosed `[`"))?;
        rest = after.trim_ascii_start();
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for a in list.split_whitespace() {
            match a.strip_prefix('!') {
                Some(n) => neg.push(n),
                None => pos.push(a),
            }
        }
        if pos.is_empty() && neg.is_empty() {
            return Err(rel_err(alt, "empty architecture list"));
        }
        keep = if pos.is_empty() {
            !neg.iter().any(|p| arch_matches(arch, p))
        } else {
            pos.iter().any(|p| arch_matches(arch, p))
        };
    }
    // Restriction formulas `<a !b> <c>`: any group may hold; in a group all terms must.
    // With no build profile active only negated terms hold.
    let mut groups = 0;
    let mut any_group_holds = false;
    while let Some(inner) = rest.strip_prefix('<') {
        let (terms, after) = inner
            .split_once('>')
            .ok_or_else(|| rel_err(alt, "unclosed `<`"))?;
        rest = after.trim_ascii_start();
        groups += 1;
        if terms.split_whitespace().all(|t| t.starts_with('!')) {
            any_group_holds = true;
        }
    }
    if groups > 0 && !any_group_holds {
        keep = false;
    }
    if !rest.trim_ascii().is_empty() {
        return Err(rel_err(alt, format!("unexpected `{}`", rest.trim_ascii())));
    }
    Ok(keep.then(|| Relation {
        name: name.to_string(),
        arch_qual,
        constraint,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ver(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn parses_full_syntax() {
        let deps = parse_dependencies(
            "a (>= 1.0) | b:any, c [amd64 !i386] <!nocheck>,\n libc6(<<2.37), d:native (= 1:2-3), e:arm64",
            "amd64",
        )
        .unwrap();
        assert_eq!(deps.len(), 5);
        assert_eq!(deps[0].len(), 2);
        assert_eq!(deps[0][0].constraint, Some((Op::Ge, ver("1.0"))));
        assert_eq!(deps[0][1].arch_qual, Some(ArchQual::Any));
        assert_eq!(deps[1][0].name, "c");
        assert_eq!(deps[2][0].constraint, Some((Op::Lt, ver("2.37"))));
        assert_eq!(deps[3][0].arch_qual, Some(ArchQual::Native));
        assert_eq!(deps[3][0].to_string(), "d:native (= 1:2-3)");
        assert_eq!(deps[4][0].arch_qual, Some(ArchQual::Arch("arm64".into())));
    }

    #[test]
    fn obsolete_operators_mean_or_equal() {
        let deps = parse_dependencies("a (< 2), b (> 1)", "amd64").unwrap();
        assert_eq!(deps[0][0].constraint.as_ref().unwrap().0, Op::Le);
        assert_eq!(deps[1][0].constraint.as_ref().unwrap().0, Op::Ge);
        assert!(deps[0][0].version_matches(&ver("2")));
        assert!(!deps[0][0].version_matches(&ver("2.1")));
    }

    #[test]
    fn arch_restrictions_drop_alternatives_and_groups() {
        let deps = parse_dependencies(
            "a [i386] | b, c [!amd64], d [linux-any], e [any-arm64]",
            "amd64",
        )
        .unwrap();
        let names: Vec<Vec<&str>> = deps
            .iter()
            .map(|d| d.iter().map(|r| r.name.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["b"], vec!["d"]]);
        assert!(arch_matches("arm64", "any-arm64"));
        assert!(!arch_matches("hurd-i386", "linux-any"));
    }

    #[test]
    fn build_profiles_evaluated_with_none_active() {
        let deps = parse_dependencies(
            "a <!nocheck>, b <stage1>, c <stage1> <!cross>, d <!a b>",
            "amd64",
        )
        .unwrap();
        let names: Vec<&str> = deps.iter().map(|d| d[0].name.as_str()).collect();
        assert_eq!(names, vec!["a", "c"]);
    }

    #[test]
    fn provides_with_versions() {
        let p = parse_provides("mail-transport-agent, libfoo-abi (= 1.2-3), x").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].version, None);
        assert_eq!(p[1].version, Some(ver("1.2-3")));
        assert!(parse_provides("x (>= 1)").is_err());
    }

    #[test]
    fn errors_name_the_bad_text() {
        for bad in [
            "a (>= 1",
            "a (~= 1)",
            "a (>= x1)",
            "a b",
            "a [amd64",
            "| b",
            "a:",
        ] {
            let e = parse_dependencies(bad, "amd64").unwrap_err();
            assert!(
                !e.text.is_empty() && bad.contains(e.text.as_str()),
                "{bad}: {e}"
            );
        }
    }
}
