/// What kind of failure an error is, independent of transport. `pkg/cri` maps kinds to gRPC codes
/// in exactly one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    PermissionDenied,
    Unauthenticated,
    DataLoss,
    Internal,
}

pub trait HasKind {
    fn kind(&self) -> ErrorKind;
}
