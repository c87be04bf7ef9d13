//! berth's own gRPC API (beside CRI), generated from `proto/berth/v1/*.proto`.

pub mod v1 {
    tonic::include_proto!("berth.v1");
}
