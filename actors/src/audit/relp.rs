//! A RELP client (the Reliable Event Logging Protocol rsyslog speaks with
//! imrelp/omrelp): the only syslog transport with receipts.
//!
//! A frame is `TXNR SP COMMAND SP DATALEN [SP DATA] LF`. The session opens
//! with `open` offering `relp_version=0`, `relp_software` and
//! `commands=syslog`; the receiver answers `rsp` with `200 OK` and the
//! offers it accepts. Each message is one `syslog` command whose
//! transaction number the receiver answers with `rsp 200` once it took the
//! message (or with another code when it refused it). Up to `window`
//! commands are unanswered at once. `close` ends the session; the receiver
//! may end it with `serverclose` (transaction 0).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::syslog::Conn;

/// How long an answer may take before the session counts as broken.
/// Local to this RELP client: a property of the protocol session, which
/// nothing else in the engine waits on.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest transaction number; the next one is 1 again.
const MAX_TXNR: u64 = 999_999_999;
/// Largest answer read (a receiver's offers are short).
const MAX_ANSWER: usize = 128 * 1024;

/// Why a RELP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum RelpError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {} s", ANSWER_TIMEOUT.as_secs())]
    Timeout,
    #[error("malformed frame from the receiver: {0}")]
    Protocol(String),
    #[error("the receiver closed the session")]
    ServerClose,
    #[error("the receiver refused the session: {0}")]
    Refused(String),
}

/// One frame read from the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub txnr: u64,
    pub command: String,
    pub data: Vec<u8>,
}

impl Frame {
    /// The status code of an `rsp` frame (`200` in `200 OK`).
    pub fn code(&self) -> Option<u16> {
        let text = std::str::from_utf8(&self.data).ok()?;
        text.split([' ', '\n']).next()?.parse().ok()
    }
}

/// `TXNR SP COMMAND SP DATALEN [SP DATA] LF`.
pub fn encode(txnr: u64, command: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("{txnr} {command} {}", data.len()).into_bytes();
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
    out
}

/// An open RELP session.
pub struct Session {
    reader: BufReader<tokio::io::ReadHalf<Conn>>,
    writer: tokio::io::WriteHalf<Conn>,
    next: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("next", &self.next).finish()
    }
}

impl Session {
    /// Opens a session on `conn`: offers version 0 and `syslog`, and
    /// checks the receiver accepted both.
    pub async fn open(conn: Conn) -> Result<Session, RelpError> {
        let (r, w) = tokio::io::split(conn);
        let mut s = Session {
            reader: BufReader::new(r),
            writer: w,
            next: 1,
        };
        let offers = format!(
            "relp_version=0\nrelp_software=squall,{},https://github.com/squall\ncommands=syslog",
            env!("CARGO_PKG_VERSION")
        );
        let txnr = s.send("open", offers.as_bytes()).await?;
        s.writer.flush().await?;
        let answer = s.read().await?;
        if answer.txnr != txnr || answer.command != "rsp" {
            return Err(RelpError::Protocol(format!(
                "expected rsp {txnr} to open, got {} {}",
                answer.txnr, answer.command
            )));
        }
        let text = String::from_utf8_lossy(&answer.data).to_string();
        if answer.code() != Some(200) {
            return Err(RelpError::Refused(text));
        }
        if !text.lines().any(|l| {
            l.strip_prefix("commands=")
                .is_some_and(|c| c.split(',').any(|c| c == "syslog"))
        }) {
            return Err(RelpError::Refused(format!(
                "the receiver does not offer the syslog command: {text}"
            )));
        }
        Ok(s)
    }

    /// Writes one command (not flushed); its transaction number.
    pub async fn send(&mut self, command: &str, data: &[u8]) -> Result<u64, RelpError> {
        let txnr = self.next;
        self.next = if self.next >= MAX_TXNR {
            1
        } else {
            self.next + 1
        };
        self.writer.write_all(&encode(txnr, command, data)).await?;
        Ok(txnr)
    }

    /// Flushes what was written.
    pub async fn flush(&mut self) -> Result<(), RelpError> {
        self.writer.flush().await?;
        Ok(())
    }

    /// Reads the next frame; a `serverclose` is [`RelpError::ServerClose`].
    pub async fn read(&mut self) -> Result<Frame, RelpError> {
        let frame = tokio::time::timeout(ANSWER_TIMEOUT, read_frame(&mut self.reader))
            .await
            .map_err(|_| RelpError::Timeout)??;
        if frame.command == "serverclose" {
            return Err(RelpError::ServerClose);
        }
        Ok(frame)
    }

    /// Sends `close` and waits briefly for its answer.
    pub async fn close(mut self) {
        if self.send("close", b"").await.is_ok() && self.flush().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.read()).await;
        }
    }
}

async fn token<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    what: &str,
    stops: &[u8],
) -> Result<(String, u8), RelpError> {
    let mut out = Vec::new();
    loop {
        let b = r.read_u8().await?;
        if stops.contains(&b) {
            let text = String::from_utf8(out)
                .map_err(|_| RelpError::Protocol(format!("{what} is not text")))?;
            return Ok((text, b));
        }
        if out.len() > 32 {
            return Err(RelpError::Protocol(format!("{what} too long")));
        }
        out.push(b);
    }
}

/// Reads one frame.
pub async fn read_frame<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Frame, RelpError> {
    // Some senders put a LF between frames: skip any.
    while r.fill_buf().await?.first() == Some(&b'\n') {
        r.consume(1);
    }
    let (txnr, _) = token(r, "TXNR", b" ").await?;
    let txnr: u64 = txnr
        .parse()
        .map_err(|_| RelpError::Protocol(format!("TXNR {txnr:?}")))?;
    let (command, _) = token(r, "COMMAND", b" ").await?;
    let (len, after) = token(r, "DATALEN", b" \n").await?;
    let len: usize = len
        .parse()
        .map_err(|_| RelpError::Protocol(format!("DATALEN {len:?}")))?;
    if len > MAX_ANSWER {
        return Err(RelpError::Protocol(format!("DATALEN {len} too large")));
    }
    let mut data = vec![0; len];
    if len > 0 {
        if after != b' ' {
            return Err(RelpError::Protocol("no data after DATALEN".into()));
        }
        r.read_exact(&mut data).await?;
        if r.read_u8().await? != b'\n' {
            return Err(RelpError::Protocol("frame not ended by LF".into()));
        }
    } else if after == b' ' && r.read_u8().await? != b'\n' {
        return Err(RelpError::Protocol("frame not ended by LF".into()));
    }
    Ok(Frame {
        txnr,
        command,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_encode_and_parse() {
        assert_eq!(encode(1, "syslog", b"abc"), b"1 syslog 3 abc\n");
        assert_eq!(encode(7, "close", b""), b"7 close 0\n");
        let input: &[u8] =
            b"1 rsp 6 200 OK\n\n0 serverclose 0\n2 rsp 20 500 message too long\n9 x y\n";
        let mut r = BufReader::new(input);
        let f = read_frame(&mut r).await.unwrap();
        assert_eq!(
            (f.txnr, f.command.as_str(), f.code()),
            (1, "rsp", Some(200))
        );
        let f = read_frame(&mut r).await.unwrap();
        assert_eq!(
            (f.txnr, f.command.as_str(), f.data.len()),
            (0, "serverclose", 0)
        );
        let f = read_frame(&mut r).await.unwrap();
        assert_eq!(f.code(), Some(500));
        assert!(matches!(
            read_frame(&mut r).await,
            Err(RelpError::Protocol(_))
        ));
    }
}
