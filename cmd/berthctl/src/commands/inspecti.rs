//! `berthctl inspecti`: verbose ImageStatus of each image, `{"status": ..., <info>...}`.

use anyhow::{bail, Result};
use k8s_cri::v1::ImageStatusRequest;

use super::image_spec;
use crate::client::GlobalOpts;
use crate::output::{self, Format};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Images to inspect (name, name:tag, name@digest or image ID)
    #[arg(required = true)]
    images: Vec<String>,
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    output: Format,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let mut c = g.image_client().await?;
    for image in &args.images {
        let req = ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: true,
        };
        let what = format!("image status of {image:?}");
        let r = g
            .call(&what, Some(g.call_timeout()), req, |r| c.image_status(r))
            .await?;
        let Some(status) = &r.image else {
            bail!("no such image {image:?} present");
        };
        let v = output::status_with_info(Some(output::to_cri_json(status)?), Vec::new(), &r.info);
        output::print(&v, args.output)?;
    }
    Ok(())
}
