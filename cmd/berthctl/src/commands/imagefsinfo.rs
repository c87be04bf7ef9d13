//! `berthctl imagefsinfo`: usage of the filesystems holding images.

use anyhow::Result;
use k8s_cri::v1::ImageFsInfoRequest;

use crate::client::GlobalOpts;
use crate::output::{self, Format};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    output: Format,
}

pub(crate) async fn run(g: &GlobalOpts, args: Args) -> Result<()> {
    let mut c = g.image_client().await?;
    let r = g
        .call(
            "image fs info",
            Some(g.call_timeout()),
            ImageFsInfoRequest {},
            |r| c.image_fs_info(r),
        )
        .await?;
    let status = output::to_cri_json(&r)?;
    let v = output::status_with_info(Some(status), Vec::new(), &Default::default());
    output::print(&v, args.output)
}
