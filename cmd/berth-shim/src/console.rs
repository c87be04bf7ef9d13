//! The container's stdio: pipes, or a pty whose master runc hands over on the console socket.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};
use nix::fcntl::OFlag;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::unistd::pipe2;

use crate::log::Stream;
use crate::sys;

/// What the shim keeps of the container's stdio once `runc create` has returned.
pub(crate) struct ContainerIo {
    /// Output to log: the pipes' read ends, or the pty master as `stdout`.
    pub(crate) outputs: Vec<(Stream, File)>,
    /// The write end of the stdin pipe, kept open so the container's stdin does not see EOF
    /// before an attach session has had its turn. (With a pty the master is the input.)
    pub(crate) stdin: Option<OwnedFd>,
}

/// The shim's ends of the container's pipes.
pub(crate) struct Pipes {
    stdout: File,
    stderr: File,
    stdin: Option<OwnedFd>,
}

impl Pipes {
    /// Pipes for stdout and stderr, and for stdin when the container keeps it open; otherwise
    /// its stdin is /dev/null. Returns the three fds to give `runc create` as its stdio (it
    /// passes them through to the container's process as fds 0, 1 and 2) and the shim's ends.
    pub(crate) fn new(stdin: bool) -> anyhow::Result<([Stdio; 3], Pipes)> {
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).context("creating the stdout pipe")?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).context("creating the stderr pipe")?;
        let (runc_in, keep_in) = if stdin {
            let (r, w) = pipe2(OFlag::O_CLOEXEC).context("creating the stdin pipe")?;
            (Stdio::from(r), Some(w))
        } else {
            (Stdio::null(), None)
        };
        sys::set_nonblocking(&out_r)?;
        sys::set_nonblocking(&err_r)?;
        let ours = Pipes {
            stdout: File::from(out_r),
            stderr: File::from(err_r),
            stdin: keep_in,
        };
        Ok(([runc_in, Stdio::from(out_w), Stdio::from(err_w)], ours))
    }

    /// Called once runc is done and the fds it was given are dropped: only the container holds
    /// the write ends now, so EOF means the container (and all it spawned) closed them.
    pub(crate) fn into_io(self) -> ContainerIo {
        ContainerIo {
            outputs: vec![(Stream::Stdout, self.stdout), (Stream::Stderr, self.stderr)],
            stdin: self.stdin,
        }
    }
}

/// The console socket, bound before `runc create --console-socket`.
pub(crate) struct ConsoleSocket {
    listener: UnixListener,
}

impl ConsoleSocket {
    pub(crate) fn bind(path: &Path) -> anyhow::Result<ConsoleSocket> {
        let listener = sys::bind_private(path)
            .with_context(|| format!("binding console socket {}", path.display()))?;
        Ok(ConsoleSocket { listener })
    }

    /// Takes the pty master runc sent. Called after `runc create` returned: runc's connection
    /// and message wait in the listen backlog, so no thread has to accept concurrently.
    pub(crate) fn receive_master(self) -> anyhow::Result<ContainerIo> {
        let (conn, _) = match self.listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                bail!("the runtime did not connect to the console socket")
            }
            Err(e) => return Err(e).context("accepting on the console socket"),
        };
        // runc sends the pty's name as the data and the fd as SCM_RIGHTS.
        let mut name = [0u8; 256];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("receiving the pty master")?;
        let mut master = None;
        for cmsg in msg.cmsgs().context("reading the console message")? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: the kernel just installed this fd for us; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if master.is_none() {
                        master = Some(owned);
                    }
                }
            }
        }
        let Some(master) = master else {
            bail!("the runtime sent no pty master on the console socket");
        };
        sys::set_nonblocking(&master)?;
        Ok(ContainerIo {
            // The master is also the container's input; it stays open as long as output is read.
            outputs: vec![(Stream::Stdout, File::from(master))],
            stdin: None,
        })
    }
}
