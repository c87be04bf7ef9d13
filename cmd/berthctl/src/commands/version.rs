//! `berthctl version`: the runtime's name and versions, in crictl's format.

use anyhow::Result;
use k8s_cri::v1::VersionRequest;

use crate::client::GlobalOpts;

/// CRI API version this client speaks.
const CRI_CLIENT_VERSION: &str = "v1";

#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

pub(crate) async fn run(g: &GlobalOpts, _args: Args) -> Result<()> {
    let mut c = g.runtime_client().await?;
    let req = VersionRequest {
        version: CRI_CLIENT_VERSION.to_string(),
    };
    let r = g
        .call("version", Some(g.call_timeout()), req, |r| c.version(r))
        .await?;
    println!("Version:  {}", r.version);
    println!("RuntimeName:  {}", r.runtime_name);
    println!("RuntimeVersion:  {}", r.runtime_version);
    println!("RuntimeApiVersion:  {}", r.runtime_api_version);
    Ok(())
}
