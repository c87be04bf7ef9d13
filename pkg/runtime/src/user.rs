//! The user a container runs as, resolved in the image's `/etc/passwd` and `/etc/group` the
//! way containerd's CRI plugin does (`WithUser`, `WithUserID`, `WithUsername`,
//! `WithAdditionalGIDs`, `WithSupplementalGroups`).
//!
//! Both files are read inside the container's rootfs with `openat2(RESOLVE_IN_ROOT)`: an
//! absolute symlink `/etc/passwd -> /x` means the image's `/x`, never the node's, and `..`
//! cannot climb out. Each file is capped at [`MAX_DB_BYTES`].

use std::path::Path;

use crate::spec::{GroupsPolicy, ResolvedUser, SecuritySpec};
use crate::{Error, Result};

/// The most of `/etc/passwd` or `/etc/group` berth reads; real ones are a few KiB.
pub const MAX_DB_BYTES: u64 = 4 << 20;

/// runc (and so containerd) refuses ids above `i32::MAX`.
const MAX_ID: i64 = i32::MAX as i64;

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// Resolves the container's user from the request, else the image's `USER` (`image_user`),
/// else root.
///
/// - `run_as_username` (or `run_as_user`) with `run_as_group` as the primary group when set;
///   a username must exist in `/etc/passwd`, a uid need not (its gid is then the entry's or 0).
/// - `USER` forms: `name`, `uid`, `uid:gid`, `name:group`, `uid:group`, `name:gid`; names must
///   exist, group names in `/etc/group`.
/// - Supplementary groups: with [`GroupsPolicy::Merge`] the user's memberships in the image's
///   `/etc/group` plus `supplemental_groups`; with `Strict` only the latter. Sorted, without
///   duplicates and without the primary gid.
pub fn resolve_user(
    rootfs: &Path,
    security: &SecuritySpec,
    image_user: &str,
) -> Result<ResolvedUser> {
    let run_as_user = security
        .run_as_user
        .map(|v| checked_id(v, "security_context.run_as_user", "uid"))
        .transpose()?;
    let run_as_group = security
        .run_as_group
        .map(|v| checked_id(v, "security_context.run_as_group", "gid"))
        .transpose()?;

    // containerd's `GenerateUserString`: the username wins over the uid; the group joins
    // either; a group alone is refused.
    let with_group = |user: String| match run_as_group {
        Some(gid) => format!("{user}:{gid}"),
        None => user,
    };
    let (userstr, field) = if !security.run_as_username.is_empty() {
        (
            with_group(security.run_as_username.clone()),
            "security_context.run_as_username",
        )
    } else if let Some(uid) = run_as_user {
        (with_group(uid.to_string()), "security_context.run_as_user")
    } else if run_as_group.is_some() {
        return Err(Error::invalid(
            "security_context.run_as_group",
            "is set without run_as_user or run_as_username",
        ));
    } else {
        (image_user.to_string(), "image user")
    };

    let mut db = Db::new(rootfs);
    let (uid, gid, name) = if userstr.is_empty() {
        // No user anywhere: root with gid 0, as containerd leaves the default spec's user;
        // the name only serves the group lookup.
        let name = db
            .passwd()?
            .and_then(|p| p.iter().find(|e| e.uid == 0))
            .map(|e| e.name.clone());
        (0, 0, name)
    } else {
        primary(&mut db, &userstr, field)?
    };

    let mut groups: Vec<u32> = Vec::new();
    if security.supplemental_groups_policy == GroupsPolicy::Merge {
        if let Some(name) = &name {
            groups.extend(image_groups(&mut db, name, field)?);
        }
    }
    for (i, g) in security.supplemental_groups.iter().enumerate() {
        groups.push(checked_id(
            *g,
            &format!("security_context.supplemental_groups[{i}]"),
            "gid",
        )?);
    }
    groups.sort_unstable();
    groups.dedup();
    groups.retain(|g| *g != gid);

    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: groups,
        username: name,
    })
}

/// One part of a user string: a number or a name.
enum Id<'a> {
    Num(u32),
    Name(&'a str),
}

fn checked_id(v: i64, field: &str, what: &str) -> Result<u32> {
    if !(0..=MAX_ID).contains(&v) {
        return Err(Error::invalid(
            field,
            format!("{what} {v} is outside 0..={MAX_ID}"),
        ));
    }
    // In range just above.
    Ok(v as u32)
}

fn parse_part<'a>(part: &'a str, field: &str, what: &str) -> Result<Id<'a>> {
    // Go's strconv.Atoi, as containerd parses: an empty part stays 0.
    if part.is_empty() {
        return Ok(Id::Num(0));
    }
    match part.parse::<i64>() {
        Ok(v) => Ok(Id::Num(checked_id(v, field, what)?)),
        Err(_)
            if part
                .trim_start_matches(['+', '-'])
                .bytes()
                .all(|b| b.is_ascii_digit()) =>
        {
            Err(Error::invalid(
                field,
                format!("{what} {part} is outside 0..={MAX_ID}"),
            ))
        }
        Err(_) => Ok(Id::Name(part)),
    }
}

/// uid, primary gid and (when known) the user name for `userstr`.
fn primary(db: &mut Db, userstr: &str, field: &str) -> Result<(u32, u32, Option<String>)> {
    let parts: Vec<&str> = userstr.split(':').collect();
    match parts[..] {
        [user] => match parse_part(user, field, "uid")? {
            // `WithUserID`: an unknown uid is fine and gets gid 0.
            Id::Num(uid) => match db.passwd_by_uid(uid)? {
                Some(e) => Ok((
                    uid,
                    entry_id(e.gid, &e.name, "gid", field)?,
                    Some(e.name.clone()),
                )),
                None => Ok((uid, 0, None)),
            },
            Id::Name(name) => {
                let e = db.passwd_by_name(name, userstr, field)?;
                Ok((
                    entry_id(e.uid, name, "uid", field)?,
                    entry_id(e.gid, name, "gid", field)?,
                    Some(name.to_string()),
                ))
            }
        },
        [user, group] => {
            let (uid, name) = match parse_part(user, field, "uid")? {
                Id::Num(uid) => (uid, db.passwd_by_uid(uid)?.map(|e| e.name.clone())),
                Id::Name(name) => {
                    let e = db.passwd_by_name(name, userstr, field)?;
                    (entry_id(e.uid, name, "uid", field)?, Some(name.to_string()))
                }
            };
            let gid = match parse_part(group, field, "gid")? {
                Id::Num(gid) => gid,
                Id::Name(group) => db.group_by_name(group, userstr, field)?,
            };
            Ok((uid, gid, name))
        }
        _ => Err(Error::invalid(
            field,
            format!("{userstr:?} is not user, user:group or an id"),
        )),
    }
}

/// An id read from the image's files, checked like a requested one.
fn entry_id(v: u64, name: &str, what: &str, field: &str) -> Result<u32> {
    if v > MAX_ID as u64 {
        return Err(Error::invalid(
            field,
            format!("{name} has {what} {v} in the image, beyond {MAX_ID}"),
        ));
    }
    Ok(v as u32)
}

/// The gids of the image's groups that list `name` as a member. A group named like the user
/// is skipped, as containerd skips it (the user's private group is its primary one).
fn image_groups(db: &mut Db, name: &str, field: &str) -> Result<Vec<u32>> {
    let Some(groups) = db.group()? else {
        return Ok(Vec::new());
    };
    groups
        .iter()
        .filter(|g| g.name != name && g.members.iter().any(|m| m == name))
        .map(|g| entry_id(g.gid, &g.name, "gid", field))
        .collect()
}

struct PasswdEntry {
    name: String,
    uid: u64,
    gid: u64,
}

struct GroupEntry {
    name: String,
    gid: u64,
    members: Vec<String>,
}

/// The lines worth parsing: comments, blank lines and NIS `+`/`-` entries skipped.
fn entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
        .map(|l| l.split(':').collect())
}

fn parse_id(s: &str) -> Option<u64> {
    let s = s.trim();
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `name:password:uid:gid[:gecos:home:shell]`; lines too short or with a bad id are skipped.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    entries(text)
        .filter_map(|f| {
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: parse_id(f[2])?,
                gid: parse_id(f[3])?,
            })
        })
        .collect()
}

/// `name:password:gid[:member,member]`.
fn parse_group(text: &str) -> Vec<GroupEntry> {
    entries(text)
        .filter_map(|f| {
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: parse_id(f[2])?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The image's user database, each file read at most once and only when needed.
struct Db<'a> {
    rootfs: &'a Path,
    passwd: Option<Option<Vec<PasswdEntry>>>,
    group: Option<Option<Vec<GroupEntry>>>,
}

impl<'a> Db<'a> {
    fn new(rootfs: &'a Path) -> Self {
        Db {
            rootfs,
            passwd: None,
            group: None,
        }
    }

    fn passwd(&mut self) -> Result<Option<&[PasswdEntry]>> {
        if self.passwd.is_none() {
            let text = read_db(self.rootfs, PASSWD)?;
            self.passwd = Some(text.as_deref().map(parse_passwd));
        }
        Ok(self.passwd.as_ref().and_then(|p| p.as_deref()))
    }

    fn group(&mut self) -> Result<Option<&[GroupEntry]>> {
        if self.group.is_none() {
            let text = read_db(self.rootfs, GROUP)?;
            self.group = Some(text.as_deref().map(parse_group));
        }
        Ok(self.group.as_ref().and_then(|g| g.as_deref()))
    }

    fn passwd_by_uid(&mut self, uid: u32) -> Result<Option<&PasswdEntry>> {
        Ok(self
            .passwd()?
            .and_then(|p| p.iter().find(|e| e.uid == u64::from(uid))))
    }

    fn passwd_by_name(&mut self, name: &str, userstr: &str, field: &str) -> Result<&PasswdEntry> {
        match self.passwd()? {
            Some(p) => p.iter().find(|e| e.name == name).ok_or_else(|| {
                Error::invalid(
                    field,
                    format!("user {name:?} (of {userstr:?}) is not in the image's {PASSWD}"),
                )
            }),
            None => Err(Error::invalid(
                field,
                format!(
                    "user {name:?} (of {userstr:?}) cannot be looked up: the image has no {PASSWD}"
                ),
            )),
        }
    }

    fn group_by_name(&mut self, group: &str, userstr: &str, field: &str) -> Result<u32> {
        let e = match self.group()? {
            Some(g) => g.iter().find(|e| e.name == group).ok_or_else(|| {
                Error::invalid(
                    field,
                    format!("group {group:?} (of {userstr:?}) is not in the image's {GROUP}"),
                )
            })?,
            None => {
                return Err(Error::invalid(
                    field,
                    format!("group {group:?} (of {userstr:?}) cannot be looked up: the image has no {GROUP}"),
                ))
            }
        };
        entry_id(e.gid, group, "gid", field)
    }
}

/// Reads `path` inside `rootfs` (never through a symlink out of it): `None` when it is not there.
fn read_db(rootfs: &Path, path: &str) -> Result<Option<String>> {
    match berth_sys::root::read_in_root(rootfs, path, MAX_DB_BYTES) {
        Ok(data) => Ok(data.map(|d| String::from_utf8_lossy(&d).into_owned())),
        Err(berth_sys::Error::InvalidArgument { reason, .. }) => {
            Err(Error::invalid(format!("image {path}"), reason))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    const PASSWD_TEXT: &str = "\
# users
root:x:0:0:root:/root:/bin/sh

+nisuser::::::
-nisgone
short:x:5
badid:x:abc:1::/:/bin/false
app:x:1000:1000:App:/home/app:/bin/sh
big:x:4294967294:1::/:/bin/false
nobody:x:65534:65534:nobody:/:/bin/false
";

    const GROUP_TEXT: &str = "\
root:x:0:
wheel:x:10:root, app
staff:x:50:app
app:x:1000:app
docker:x:999:other,app
short:x
+nisgroup
audio:x:29:
";

    /// A rootfs with the given `/etc/passwd` and `/etc/group` (left out when `None`).
    fn rootfs(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        if let Some(p) = passwd {
            fs::write(dir.path().join("etc/passwd"), p).unwrap();
        }
        if let Some(g) = group {
            fs::write(dir.path().join("etc/group"), g).unwrap();
        }
        dir
    }

    fn image() -> tempfile::TempDir {
        rootfs(Some(PASSWD_TEXT), Some(GROUP_TEXT))
    }

    fn resolve(
        root: &tempfile::TempDir,
        security: &SecuritySpec,
        image_user: &str,
    ) -> Result<ResolvedUser> {
        resolve_user(root.path(), security, image_user)
    }

    fn user(uid: u32, gid: u32, groups: &[u32], name: Option<&str>) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: groups.to_vec(),
            username: name.map(String::from),
        }
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("not an InvalidArgument: {other:?}"),
        }
    }

    #[test]
    fn nothing_set_is_root_with_roots_groups() {
        let root = image();
        assert_eq!(
            resolve(&root, &SecuritySpec::default(), "").unwrap(),
            user(0, 0, &[10], Some("root"))
        );
    }

    #[test]
    fn a_known_uid_takes_the_entrys_gid_name_and_groups() {
        let root = image();
        let sec = SecuritySpec {
            run_as_user: Some(1000),
            ..Default::default()
        };
        // Not 1000 (the group named like the user is skipped, as containerd does).
        assert_eq!(
            resolve(&root, &sec, "nobody").unwrap(),
            user(1000, 1000, &[10, 50, 999], Some("app"))
        );
    }

    #[test]
    fn an_unknown_uid_gets_gid_0() {
        let root = image();
        let sec = SecuritySpec {
            run_as_user: Some(4242),
            ..Default::default()
        };
        assert_eq!(resolve(&root, &sec, "").unwrap(), user(4242, 0, &[], None));
        let bare = rootfs(None, None);
        assert_eq!(resolve(&bare, &sec, "").unwrap(), user(4242, 0, &[], None));
    }

    #[test]
    fn run_as_group_overrides_the_primary_gid() {
        let root = image();
        let sec = SecuritySpec {
            run_as_user: Some(1000),
            run_as_group: Some(50),
            ..Default::default()
        };
        assert_eq!(
            resolve(&root, &sec, "").unwrap(),
            user(1000, 50, &[10, 999], Some("app"))
        );
        let sec = SecuritySpec {
            run_as_username: "app".into(),
            run_as_group: Some(7),
            ..Default::default()
        };
        assert_eq!(
            resolve(&root, &sec, "").unwrap(),
            user(1000, 7, &[10, 50, 999], Some("app"))
        );
    }

    #[test]
    fn run_as_group_alone_is_refused() {
        let sec = SecuritySpec {
            run_as_group: Some(5),
            ..Default::default()
        };
        assert_eq!(
            field_of(resolve(&image(), &sec, "app").unwrap_err()),
            "security_context.run_as_group"
        );
    }

    #[test]
    fn run_as_username_is_looked_up_and_wins_over_run_as_user() {
        let root = image();
        let sec = SecuritySpec {
            run_as_username: "nobody".into(),
            run_as_user: Some(1000),
            ..Default::default()
        };
        assert_eq!(
            resolve(&root, &sec, "").unwrap(),
            user(65534, 65534, &[], Some("nobody"))
        );
    }

    #[test]
    fn an_unknown_run_as_username_is_refused() {
        let sec = SecuritySpec {
            run_as_username: "ghost".into(),
            ..Default::default()
        };
        let err = resolve(&image(), &sec, "").unwrap_err();
        assert!(err.to_string().contains("ghost"), "{err}");
        assert_eq!(field_of(err), "security_context.run_as_username");
        // No passwd at all: a name cannot be found either.
        let err = resolve(&rootfs(None, None), &sec, "").unwrap_err();
        assert_eq!(field_of(err), "security_context.run_as_username");
    }

    #[test]
    fn image_user_forms() {
        let root = image();
        let none = SecuritySpec::default();
        let cases: [(&str, ResolvedUser); 7] = [
            ("app", user(1000, 1000, &[10, 50, 999], Some("app"))),
            ("1000", user(1000, 1000, &[10, 50, 999], Some("app"))),
            ("1000:50", user(1000, 50, &[10, 999], Some("app"))),
            ("app:staff", user(1000, 50, &[10, 999], Some("app"))),
            ("1000:staff", user(1000, 50, &[10, 999], Some("app"))),
            ("app:29", user(1000, 29, &[10, 50, 999], Some("app"))),
            ("4242:4343", user(4242, 4343, &[], None)),
        ];
        for (image_user, expected) in cases {
            assert_eq!(
                resolve(&root, &none, image_user).unwrap(),
                expected,
                "{image_user}"
            );
        }
    }

    #[test]
    fn numeric_image_user_needs_no_user_database() {
        let bare = rootfs(None, None);
        assert_eq!(
            resolve(&bare, &SecuritySpec::default(), "123:456").unwrap(),
            user(123, 456, &[], None)
        );
    }

    #[test]
    fn unknown_image_names_are_refused() {
        let root = image();
        let none = SecuritySpec::default();
        for bad in [
            "ghost",
            "ghost:staff",
            "app:nogroup",
            "1000:nogroup",
            "a:b:c",
        ] {
            let err = resolve(&root, &none, bad).unwrap_err();
            assert_eq!(field_of(err), "image user", "{bad}");
        }
        // A group name without /etc/group.
        let no_group = rootfs(Some(PASSWD_TEXT), None);
        assert_eq!(
            field_of(resolve(&no_group, &none, "app:staff").unwrap_err()),
            "image user"
        );
    }

    #[test]
    fn merge_adds_requested_groups_sorted_without_duplicates_or_the_primary() {
        let sec = SecuritySpec {
            run_as_user: Some(1000),
            supplemental_groups: vec![2000, 50, 1000, 5],
            supplemental_groups_policy: GroupsPolicy::Merge,
            ..Default::default()
        };
        assert_eq!(
            resolve(&image(), &sec, "").unwrap().additional_gids,
            vec![5, 10, 50, 999, 2000]
        );
    }

    #[test]
    fn strict_keeps_only_the_requested_groups() {
        let sec = SecuritySpec {
            run_as_user: Some(1000),
            supplemental_groups: vec![2000, 5],
            supplemental_groups_policy: GroupsPolicy::Strict,
            ..Default::default()
        };
        assert_eq!(
            resolve(&image(), &sec, "").unwrap(),
            user(1000, 1000, &[5, 2000], Some("app"))
        );
    }

    #[test]
    fn ids_beyond_int32_are_refused() {
        let root = image();
        let cases = [
            (
                SecuritySpec {
                    run_as_user: Some(1 << 31),
                    ..Default::default()
                },
                "security_context.run_as_user",
            ),
            (
                SecuritySpec {
                    run_as_user: Some(-1),
                    ..Default::default()
                },
                "security_context.run_as_user",
            ),
            (
                SecuritySpec {
                    run_as_user: Some(1),
                    run_as_group: Some(1 << 32),
                    ..Default::default()
                },
                "security_context.run_as_group",
            ),
            (
                SecuritySpec {
                    run_as_user: Some(1),
                    supplemental_groups: vec![3, -4],
                    ..Default::default()
                },
                "security_context.supplemental_groups[1]",
            ),
            (
                SecuritySpec {
                    run_as_username: "big".into(),
                    ..Default::default()
                },
                "security_context.run_as_username",
            ),
        ];
        for (sec, field) in cases {
            assert_eq!(field_of(resolve(&root, &sec, "").unwrap_err()), field);
        }
        let none = SecuritySpec::default();
        for bad in ["2147483648", "1:2147483648", "99999999999999999999", "-1"] {
            assert_eq!(
                field_of(resolve(&root, &none, bad).unwrap_err()),
                "image user",
                "{bad}"
            );
        }
        assert_eq!(resolve(&root, &none, "2147483647").unwrap().uid, 2147483647);
    }

    #[test]
    fn passwd_symlink_out_of_the_rootfs_is_not_followed_out() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("passwd");
        fs::write(
            &secret,
            "app:x:1000:1000::/:/bin/sh\nroot:x:0:4242::/:/bin/sh\n",
        )
        .unwrap();
        let root = rootfs(None, None);
        symlink(&secret, root.path().join("etc/passwd")).unwrap();
        // Resolved inside the rootfs, the link points at nothing.
        assert_eq!(
            resolve(&root, &SecuritySpec::default(), "1000").unwrap(),
            user(1000, 0, &[], None)
        );
        assert_eq!(
            field_of(resolve(&root, &SecuritySpec::default(), "app").unwrap_err()),
            "image user"
        );
        // `..` cannot climb out either.
        let root = rootfs(None, None);
        let up = "../".repeat(64) + secret.to_str().unwrap().trim_start_matches('/');
        symlink(up, root.path().join("etc/passwd")).unwrap();
        assert!(resolve(&root, &SecuritySpec::default(), "app").is_err());
    }

    #[test]
    fn passwd_symlink_inside_the_rootfs_is_followed() {
        let root = rootfs(None, None);
        fs::create_dir_all(root.path().join("usr/lib")).unwrap();
        fs::write(root.path().join("usr/lib/passwd"), PASSWD_TEXT).unwrap();
        symlink("/usr/lib/passwd", root.path().join("etc/passwd")).unwrap();
        assert_eq!(
            resolve(&root, &SecuritySpec::default(), "app").unwrap().uid,
            1000
        );
    }

    #[test]
    fn an_oversized_group_file_is_refused() {
        let root = rootfs(Some(PASSWD_TEXT), None);
        let f = fs::File::create(root.path().join("etc/group")).unwrap();
        f.set_len(MAX_DB_BYTES + 1).unwrap();
        let err = resolve(&root, &SecuritySpec::default(), "app").unwrap_err();
        assert_eq!(field_of(err), "image /etc/group");
    }

    #[test]
    fn a_fifo_or_directory_is_refused_without_hanging() {
        let root = rootfs(None, Some(GROUP_TEXT));
        nix::unistd::mkfifo(
            &root.path().join("etc/passwd"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let err = resolve(&root, &SecuritySpec::default(), "app").unwrap_err();
        assert_eq!(field_of(err), "image /etc/passwd");
        let root = rootfs(None, None);
        fs::create_dir(root.path().join("etc/passwd")).unwrap();
        assert!(resolve(&root, &SecuritySpec::default(), "app").is_err());
    }

    #[test]
    fn odd_lines_are_skipped() {
        let p = parse_passwd(PASSWD_TEXT);
        let names: Vec<&str> = p.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["root", "app", "big", "nobody"]);
        let g = parse_group(GROUP_TEXT);
        let names: Vec<&str> = g.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["root", "wheel", "staff", "app", "docker", "audio"]);
        assert_eq!(g[1].members, ["root", "app"]);
        assert!(g[0].members.is_empty());
    }
}
