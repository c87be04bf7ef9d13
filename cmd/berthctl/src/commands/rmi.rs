//! `berthctl rmi`: remove images by name or ID, all of them, or those no container uses.

use std::collections::HashSet;

use anyhow::{bail, Result};
use k8s_cri::v1::{
    ImageStatusRequest, ListContainersRequest, ListImagesRequest, RemoveImageRequest,
};

use super::image_spec;
use crate::client::GlobalOpts;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Images to remove (name, name:tag, name@digest or image ID)
    images: Vec<String>,
    /// Remove all images
    #[arg(short, long)]
    all: bool,
    /// Remove all images not used by any container
    #[arg(short = 'q', long)]
    prune: bool,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    if args.images.is_empty() && !args.all && !args.prune {
        bail!("no image ID given; use IMAGE..., --all or --prune");
    }
    let mut c = g.image_client().await?;
    let timeout = Some(g.call_timeout());
    let mut ids = args.images.clone();
    if args.all || args.prune {
        let list = g
            .call(
                "list images",
                timeout,
                ListImagesRequest { filter: None },
                |r| c.list_images(r),
            )
            .await?;
        let in_use = if args.prune {
            let mut rt = g.runtime_client().await?;
            let cs = g
                .call(
                    "list containers",
                    timeout,
                    ListContainersRequest { filter: None },
                    |r| rt.list_containers(r),
                )
                .await?;
            cs.containers
                .into_iter()
                .flat_map(|c| [Some(c.image_ref), c.image.map(|s| s.image)])
                .flatten()
                .collect::<HashSet<_>>()
        } else {
            HashSet::new()
        };
        ids.extend(
            list.images
                .into_iter()
                .filter(|im| !in_use.contains(&im.id))
                .map(|im| im.id),
        );
    }

    let mut failed = false;
    for id in &ids {
        let req = ImageStatusRequest {
            image: Some(image_spec(id)),
            verbose: false,
        };
        let status = match g
            .call(&format!("image status of {id:?}"), timeout, req, |r| {
                c.image_status(r)
            })
            .await
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("berthctl: {e}");
                failed = true;
                continue;
            }
        };
        let Some(image) = status.image else {
            eprintln!("berthctl: no such image {id:?}");
            failed = true;
            continue;
        };
        let req = RemoveImageRequest {
            image: Some(image_spec(&image.id)),
        };
        if let Err(e) = g
            .call(&format!("remove image {id:?}"), timeout, req, |r| {
                c.remove_image(r)
            })
            .await
        {
            // Pruning races with the runtime's own users of images: not an error then.
            if !args.prune {
                eprintln!("berthctl: {e}");
                failed = true;
            }
            continue;
        }
        if image.repo_tags.is_empty() {
            for d in &image.repo_digests {
                println!("Deleted: {d}");
            }
        }
        for t in &image.repo_tags {
            println!("Deleted: {t}");
        }
    }
    if failed {
        bail!("unable to remove the image(s)");
    }
    Ok(())
}
