//! `berthctl images`: the image list as crictl's table, IDs, or camelCase JSON/YAML.

use std::cmp::Ordering;

use anyhow::Result;
use k8s_cri::v1::{Image, ImageFilter, ListImagesRequest, ListImagesResponse};

use super::image_spec;
use crate::client::GlobalOpts;
use crate::output::{self, truncate_id, ListFormat};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Only images of this repository (REPO or REPO:TAG)
    repo: Option<String>,
    /// Only show image IDs
    #[arg(short, long)]
    quiet: bool,
    /// Show digests
    #[arg(long)]
    digests: bool,
    /// Show output without truncating the ID
    #[arg(long)]
    no_trunc: bool,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    output: ListFormat,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let mut c = g.image_client().await?;
    let req = ListImagesRequest {
        filter: args.repo.as_deref().map(|r| ImageFilter {
            image: Some(image_spec(r)),
        }),
    };
    let r = g
        .call("list images", Some(g.call_timeout()), req, |r| {
            c.list_images(r)
        })
        .await?;
    // Not every runtime honours the filter (containerd ignores it): filter here as well.
    let mut images: Vec<Image> = r
        .images
        .into_iter()
        .filter(|im| args.repo.as_deref().is_none_or(|f| matches_filter(im, f)))
        .collect();
    images.sort_by(by_ref);
    if args.quiet {
        for im in &images {
            println!("{}", im.id);
        }
        return Ok(());
    }
    match args.output.structured() {
        None => {
            print!(
                "{}",
                output::format_table(&image_rows(&images, args.digests, args.no_trunc))
            );
            Ok(())
        }
        Some(fmt) => {
            let v = output::to_cri_json(&ListImagesResponse { images })?;
            output::print(&v, fmt)
        }
    }
}

/// crictl's `normalizeRepoDigest`: (name, digest) of the first repo digest.
fn repo_digest(repo_digests: &[String]) -> (String, String) {
    match repo_digests.first() {
        None => ("<none>".into(), "<none>".into()),
        Some(rd) => match rd.split_once('@') {
            Some((name, digest)) if !digest.contains('@') => (name.into(), digest.into()),
            _ => ("errorName".into(), "errorRepoDigest".into()),
        },
    }
}

/// crictl's `normalizeRepoTagPair`: one (repository, tag) per repo tag.
fn repo_tag_pairs(repo_tags: &[String], image_name: &str) -> Vec<(String, String)> {
    const NONE: &str = "<none>";
    if repo_tags.is_empty() {
        return vec![(image_name.into(), NONE.into())];
    }
    repo_tags
        .iter()
        .map(|rt| match rt.rsplit_once(':') {
            None => ("errorRepoTag".into(), "errorRepoTag".into()),
            Some((name, tag)) => {
                let name = if name == NONE { image_name } else { name };
                (name.into(), tag.into())
            }
        })
        .collect()
}

/// Header and rows of `crictl images` (`--digests` adds a DIGEST column).
pub(crate) fn image_rows(images: &[Image], digests: bool, no_trunc: bool) -> Vec<Vec<String>> {
    let mut rows = vec![if digests {
        vec!["IMAGE", "TAG", "DIGEST", "IMAGE ID", "SIZE"]
    } else {
        vec!["IMAGE", "TAG", "IMAGE ID", "SIZE"]
    }
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>()];
    for im in images {
        let (name, digest) = repo_digest(&im.repo_digests);
        let size = output::human_size(im.size);
        let (id, digest) = if no_trunc {
            (im.id.clone(), digest)
        } else {
            (
                truncate_id(&im.id, "sha256:"),
                truncate_id(&digest, "sha256:"),
            )
        };
        for (repo, tag) in repo_tag_pairs(&im.repo_tags, &name) {
            let mut row = vec![repo, tag];
            if digests {
                row.push(digest.clone());
            }
            row.push(id.clone());
            row.push(size.clone());
            rows.push(row);
        }
    }
    rows
}

/// crictl's `imageByRef` order: by first tag, else first digest, else ID.
fn by_ref(a: &Image, b: &Image) -> Ordering {
    let key = |im: &Image| {
        (
            im.repo_tags.first().cloned().unwrap_or_default(),
            im.repo_digests.first().cloned().unwrap_or_default(),
            im.id.clone(),
        )
    };
    match (a.repo_tags.is_empty(), b.repo_tags.is_empty()) {
        (false, true) => Ordering::Less,
        (true, false) => Ordering::Greater,
        _ => key(a).cmp(&key(b)),
    }
}

/// Names `filter` may stand for: as given, and as docker.io would expand it.
fn expansions(filter: &str) -> Vec<String> {
    let mut out = vec![filter.to_string()];
    let first = filter.split('/').next().unwrap_or(filter);
    let has_domain = filter.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if !has_domain {
        if filter.contains('/') {
            out.push(format!("docker.io/{filter}"));
        } else {
            out.push(format!("docker.io/library/{filter}"));
        }
    }
    out
}

/// Whether `im` is what `images REPO[:TAG]` (or an ID prefix) asks for.
fn matches_filter(im: &Image, filter: &str) -> bool {
    let id = im.id.strip_prefix("sha256:").unwrap_or(&im.id);
    let f = filter.strip_prefix("sha256:").unwrap_or(filter);
    if !f.is_empty() && (im.id == filter || (f.len() >= 3 && id.starts_with(f))) {
        return true;
    }
    expansions(filter).iter().any(|want| {
        im.repo_tags
            .iter()
            .any(|rt| rt == want || rt.rsplit_once(':').is_some_and(|(repo, _)| repo == want))
            || im
                .repo_digests
                .iter()
                .any(|rd| rd == want || rd.split_once('@').is_some_and(|(repo, _)| repo == want))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, tags: &[&str], digests: &[&str], size: u64) -> Image {
        Image {
            id: id.into(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
            size,
            ..Default::default()
        }
    }

    const ID: &str = "sha256:3f57d9401f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741";
    const DIGEST: &str = "sha256:9ae97d36d26566ff84e8893c64a6dc4fe8ca6d1144bf5b87b2b85a32def253c7";

    #[test]
    fn table_has_crictl_columns_and_truncated_ids() {
        let ims = [image(
            ID,
            &[
                "127.0.0.1:5000/berth/busybox:latest",
                "127.0.0.1:5000/berth/busybox:v2",
            ],
            &[&format!("127.0.0.1:5000/berth/busybox@{DIGEST}")],
            2_140_000,
        )];
        let rows = image_rows(&ims, false, false);
        assert_eq!(rows[0], ["IMAGE", "TAG", "IMAGE ID", "SIZE"]);
        assert_eq!(
            rows[1],
            [
                "127.0.0.1:5000/berth/busybox",
                "latest",
                "3f57d9401f8d4",
                "2.14MB"
            ]
        );
        assert_eq!(rows[2][1], "v2");
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn digests_column_and_no_trunc() {
        let ims = [image(ID, &["x/y:1"], &[&format!("x/y@{DIGEST}")], 500)];
        let rows = image_rows(&ims, true, false);
        assert_eq!(rows[0], ["IMAGE", "TAG", "DIGEST", "IMAGE ID", "SIZE"]);
        assert_eq!(
            rows[1],
            ["x/y", "1", "9ae97d36d2656", "3f57d9401f8d4", "500B"]
        );
        let rows = image_rows(&ims, true, true);
        assert_eq!(rows[1][2], DIGEST);
        assert_eq!(rows[1][3], ID);
    }

    #[test]
    fn untagged_images_show_none_tag_and_digest_name() {
        let ims = [image(ID, &[], &[&format!("reg/a@{DIGEST}")], 1)];
        let rows = image_rows(&ims, false, false);
        assert_eq!(rows[1], ["reg/a", "<none>", "3f57d9401f8d4", "1B"]);
        let ims = [image(ID, &[], &[], 1)];
        assert_eq!(image_rows(&ims, false, false)[1][0], "<none>");
    }

    #[test]
    fn table_output_is_aligned() {
        let ims = [image(
            ID,
            &["127.0.0.1:5000/berth/busybox:latest"],
            &[],
            2_140_000,
        )];
        let t = output::format_table(&image_rows(&ims, false, false));
        // "127.0.0.1:5000/berth/busybox" is 28 wide: + 3 padding; the rest hit the minimum 20
        let want = format!(
            "{:<31}{:<20}{:<20}SIZE\n{:<31}{:<20}{:<20}2.14MB\n",
            "IMAGE", "TAG", "IMAGE ID", "127.0.0.1:5000/berth/busybox", "latest", "3f57d9401f8d4"
        );
        assert_eq!(t, want);
    }

    #[test]
    fn filter_matches_repo_tag_and_id_prefix() {
        let im = image(ID, &["docker.io/library/busybox:1.36"], &[], 1);
        assert!(matches_filter(&im, "busybox"));
        assert!(matches_filter(&im, "busybox:1.36"));
        assert!(matches_filter(&im, "docker.io/library/busybox"));
        assert!(matches_filter(&im, "3f57d94"));
        assert!(!matches_filter(&im, "busybox:1.35"));
        assert!(!matches_filter(&im, "alpine"));
    }

    #[test]
    fn images_sort_by_first_tag() {
        let mut ims = [
            image("sha256:2", &[], &[], 1),
            image("sha256:1", &["b:1"], &[], 1),
            image("sha256:3", &["a:1"], &[], 1),
        ];
        ims.sort_by(by_ref);
        let ids: Vec<&str> = ims.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["sha256:3", "sha256:1", "sha256:2"]);
    }
}
