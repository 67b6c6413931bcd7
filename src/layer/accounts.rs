//! Merging declared users and groups into the account databases of the layers below.

use crate::spec::{AccountsSpec, UserSpec};

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
    let mut t = Tables::parse(db);
    t.ensure_root();
    for g in &spec.groups {
        t.ensure_group(&g.name, g.gid)?;
    }
    let lastchg = if epoch > 0 {
        (epoch / 86400).to_string()
    } else {
        String::new()
    };
    let mut homes = Vec::new();
    for u in &spec.users {
        homes.push(t.add_user(u, &lastchg)?);
    }
    Ok((t.render(), homes))
}

/// The four account files as tables.
struct Tables {
    passwd: Table,
    group: Table,
    shadow: Table,
    gshadow: Table,
}

fn row(line: &str) -> Vec<String> {
    line.split(':').map(String::from).collect()
}

impl Tables {
    fn parse(db: &AccountDb) -> Self {
        Self {
            passwd: Table::parse(&db.passwd, 7),
            group: Table::parse(&db.group, 4),
            shadow: Table::parse(&db.shadow, 9),
            gshadow: Table::parse(&db.gshadow, 4),
        }
    }

    fn render(&self) -> AccountDb {
        AccountDb {
            passwd: self.passwd.render(),
            group: self.group.render(),
            shadow: self.shadow.render(),
            gshadow: self.gshadow.render(),
        }
    }

    /// An image without a root user or group gets Debian's.
    fn ensure_root(&mut self) {
        if self.passwd.find("root").is_none() {
            self.passwd
                .rows
                .insert(0, row("root:x:0:0:root:/root:/bin/sh"));
            self.shadow.rows.insert(0, row("root:*::0:99999:7:::"));
        }
        if self.group.find("root").is_none() {
            self.group.rows.insert(0, row("root:x:0:"));
            self.gshadow.rows.insert(0, row("root:*::"));
        }
    }

    /// Add group `name` with `gid`, or accept it if it exists exactly so.
    fn ensure_group(&mut self, name: &str, gid: u32) -> Result<(), AccountError> {
        let group = &mut self.group;
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
                self.gshadow
                    .upsert(vec![name.into(), "!".into(), String::new(), String::new()]);
                Ok(())
            }
        }
    }

    /// Refuse a user whose name or uid is already taken by another.
    fn check_user_ids(&self, u: &UserSpec) -> Result<(), AccountError> {
        let passwd = &self.passwd;
        match (passwd.find(&u.name), passwd.find_id(u.uid)) {
            (Some(i), _) if passwd.rows[i][2] != u.uid.to_string() => Err(AccountError(format!(
                "user `{}` already exists with uid {}, not {}",
                u.name, passwd.rows[i][2], u.uid
            ))),
            (None, Some(i)) => Err(AccountError(format!(
                "uid {} for user `{}` is taken by `{}`",
                u.uid, u.name, passwd.rows[i][0]
            ))),
            _ => Ok(()),
        }
    }

    /// Add (or update) user `u` with its primary and supplementary groups; returns its home.
    fn add_user(&mut self, u: &UserSpec, lastchg: &str) -> Result<Home, AccountError> {
        let gid = u.gid.unwrap_or(u.uid);
        if self.group.find_id(gid).is_none() {
            self.ensure_group(&u.name, gid)?;
        }
        self.check_user_ids(u)?;
        let home = u
            .home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", u.name));
        let shell = u.shell.clone().unwrap_or_else(|| "/bin/sh".into());
        self.passwd.upsert(vec![
            u.name.clone(),
            "x".into(),
            u.uid.to_string(),
            gid.to_string(),
            u.comment.clone().unwrap_or_default(),
            home.clone(),
            shell,
        ]);
        self.shadow.upsert(vec![
            u.name.clone(),
            "!".into(),
            lastchg.into(),
            "0".into(),
            "99999".into(),
            "7".into(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        self.add_to_groups(u)?;
        Ok(Home {
            path: home,
            uid: u.uid,
            gid,
        })
    }

    /// Make `u` a member of each of its supplementary groups, which must exist.
    fn add_to_groups(&mut self, u: &UserSpec) -> Result<(), AccountError> {
        for g in &u.groups {
            let Some(i) = self.group.find(g) else {
                return Err(AccountError(format!(
                    "user `{}`: supplementary group `{g}` does not exist",
                    u.name
                )));
            };
            add_member(&mut self.group.rows[i], 3, &u.name);
            if let Some(j) = self.gshadow.find(g) {
                add_member(&mut self.gshadow.rows[j], 3, &u.name);
            }
        }
        Ok(())
    }
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
