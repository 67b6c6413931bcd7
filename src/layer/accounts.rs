//! Merging declared users and groups into the account databases of the layers below.

use crate::spec::AccountsSpec;

/// The four account databases as text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountDb {
    /// /etc/passwd
    pub passwd: String,
    /// /etc/group
    pub group: String,
    /// /etc/shadow
    pub shadow: String,
    /// /etc/gshadow
    pub gshadow: String,
}

/// A home directory to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Home {
    /// Absolute path.
    pub path: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// A declared account that clashes with what is already there.
#[derive(Debug, thiserror::Error)]
#[error("accounts: {0}")]
pub struct AccountError(pub String);

struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn parse(text: &str, width: usize) -> Self {
        let rows = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut r: Vec<String> = l.split(':').map(String::from).collect();
                r.resize(width.max(r.len()), String::new());
                r
            })
            .collect();
        Self { rows }
    }
    fn find(&self, name: &str) -> Option<usize> {
        self.rows.iter().position(|r| r[0] == name)
    }
    fn find_id(&self, id: u32) -> Option<usize> {
        self.rows.iter().position(|r| r[2] == id.to_string())
    }
    fn upsert(&mut self, row: Vec<String>) {
        match self.find(&row[0]) {
            Some(i) => self.rows[i] = row,
            None => self.rows.push(row),
        }
    }
    fn render(&self) -> String {
        self.rows.iter().map(|r| r.join(":") + "\n").collect()
    }
}

fn add_member(row: &mut [String], idx: usize, user: &str) {
    let mut members: Vec<&str> = row[idx].split(',').filter(|m| !m.is_empty()).collect();
    if !members.contains(&user) {
        members.push(user);
    }
    row[idx] = members.join(",");
}

/// Merge `spec` into `db`; `epoch` (seconds) dates the shadow entries.
pub fn merge(
    db: &AccountDb,
    spec: &AccountsSpec,
    epoch: u64,
) -> Result<(AccountDb, Vec<Home>), AccountError> {
    let mut passwd = Table::parse(&db.passwd, 7);
    let mut group = Table::parse(&db.group, 4);
    let mut shadow = Table::parse(&db.shadow, 9);
    let mut gshadow = Table::parse(&db.gshadow, 4);
    if passwd.find("root").is_none() {
        passwd.rows.insert(
            0,
            "root:x:0:0:root:/root:/bin/sh"
                .split(':')
                .map(String::from)
                .collect(),
        );
        shadow.rows.insert(
            0,
            "root:*::0:99999:7:::"
                .split(':')
                .map(String::from)
                .collect(),
        );
    }
    if group.find("root").is_none() {
        group
            .rows
            .insert(0, "root:x:0:".split(':').map(String::from).collect());
        gshadow
            .rows
            .insert(0, "root:*::".split(':').map(String::from).collect());
    }
    let lastchg = if epoch > 0 {
        (epoch / 86400).to_string()
    } else {
        String::new()
    };

    let ensure_group = |name: &str,
                        gid: u32,
                        group: &mut Table,
                        gshadow: &mut Table|
     -> Result<(), AccountError> {
        match (group.find(name), group.find_id(gid)) {
            (Some(i), _) if group.rows[i][2] == gid.to_string() => Ok(()),
            (Some(i), _) => Err(AccountError(format!(
                "group `{name}` already exists with gid {}, not {gid}",
                group.rows[i][2]
            ))),
            (None, Some(i)) => Err(AccountError(format!(
                "gid {gid} for group `{name}` is taken by `{}`",
                group.rows[i][0]
            ))),
            (None, None) => {
                group.rows.push(vec![
                    name.into(),
                    "x".into(),
                    gid.to_string(),
                    String::new(),
                ]);
                gshadow.upsert(vec![name.into(), "!".into(), String::new(), String::new()]);
                Ok(())
            }
        }
    };

    for g in &spec.groups {
        ensure_group(&g.name, g.gid, &mut group, &mut gshadow)?;
    }
    let mut homes = Vec::new();
    for u in &spec.users {
        let gid = u.gid.unwrap_or(u.uid);
        if group.find_id(gid).is_none() {
            ensure_group(&u.name, gid, &mut group, &mut gshadow)?;
        }
        match (passwd.find(&u.name), passwd.find_id(u.uid)) {
            (Some(i), _) if passwd.rows[i][2] != u.uid.to_string() => {
                return Err(AccountError(format!(
                    "user `{}` already exists with uid {}, not {}",
                    u.name, passwd.rows[i][2], u.uid
                )));
            }
            (None, Some(i)) => {
                return Err(AccountError(format!(
                    "uid {} for user `{}` is taken by `{}`",
                    u.uid, u.name, passwd.rows[i][0]
                )));
            }
            _ => {}
        }
        let home = u
            .home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", u.name));
        let shell = u.shell.clone().unwrap_or_else(|| "/bin/sh".into());
        passwd.upsert(vec![
            u.name.clone(),
            "x".into(),
            u.uid.to_string(),
            gid.to_string(),
            u.comment.clone().unwrap_or_default(),
            home.clone(),
            shell,
        ]);
        shadow.upsert(vec![
            u.name.clone(),
            "!".into(),
            lastchg.clone(),
            "0".into(),
            "99999".into(),
            "7".into(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        for g in &u.groups {
            let Some(i) = group.find(g) else {
                return Err(AccountError(format!(
                    "user `{}`: supplementary group `{g}` does not exist",
                    u.name
                )));
            };
            add_member(&mut group.rows[i], 3, &u.name);
            if let Some(j) = gshadow.find(g) {
                add_member(&mut gshadow.rows[j], 3, &u.name);
            }
        }
        homes.push(Home {
            path: home,
            uid: u.uid,
            gid,
        });
    }
    let out = AccountDb {
        passwd: passwd.render(),
        group: group.render(),
        shadow: shadow.render(),
        gshadow: gshadow.render(),
    };
    Ok((out, homes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{GroupSpec, UserSpec};

    fn user(name: &str, uid: u32, groups: &[&str]) -> UserSpec {
        UserSpec {
            name: name.into(),
            uid,
            gid: None,
            groups: groups.iter().map(|s| s.to_string()).collect(),
            home: None,
            shell: Some("/bin/bash".into()),
            comment: None,
        }
    }

    #[test]
    fn merges_into_existing_databases() {
        let db = AccountDb {
            passwd: "root:x:0:0:root:/root:/bin/bash\n".into(),
            group: "root:x:0:\nsudo:x:27:\n".into(),
            shadow: "root:*:19000:0:99999:7:::\n".into(),
            gshadow: "root:*::\nsudo:*::\n".into(),
        };
        let spec = AccountsSpec {
            groups: vec![GroupSpec {
                name: "docker".into(),
                gid: 999,
            }],
            users: vec![user("coder", 1000, &["sudo", "docker"])],
        };
        let (out, homes) = merge(&db, &spec, 86400 * 20000).unwrap();
        assert_eq!(
            out.passwd,
            "root:x:0:0:root:/root:/bin/bash\ncoder:x:1000:1000::/home/coder:/bin/bash\n"
        );
        assert_eq!(
            out.group,
            "root:x:0:\nsudo:x:27:coder\ndocker:x:999:coder\ncoder:x:1000:\n"
        );
        assert!(out.shadow.contains("coder:!:20000:0:99999:7:::\n"));
        assert!(out.gshadow.contains("sudo:*::coder\n"));
        assert_eq!(
            homes,
            vec![Home {
                path: "/home/coder".into(),
                uid: 1000,
                gid: 1000
            }]
        );
    }

    #[test]
    fn clashes_are_errors() {
        let db = AccountDb {
            passwd: "root:x:0:0::/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n".into(),
            ..Default::default()
        };
        let err = merge(
            &db,
            &AccountsSpec {
                groups: vec![],
                users: vec![user("coder", 1000, &[])],
            },
            0,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("uid 1000 for user `coder` is taken by `bob`"),
            "{err}"
        );
        let err = merge(
            &db,
            &AccountsSpec {
                groups: vec![],
                users: vec![user("eve", 1001, &["nope"])],
            },
            0,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("supplementary group `nope`"),
            "{err}"
        );
    }
}
