//! One client connection: TLS (LDAPS, or StartTLS first thing on the plain
//! port), its own LDAPS connection to the DC, and every operation relayed
//! with its message id. Operations run concurrently, as LDAP allows; each
//! waits for its own responses. The double's own reads (a target's
//! `adminCount`, a member's `groupType`) go over the same DC connection, so
//! they see what the bound account sees, under message ids a client never
//! uses.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{
    LdapDerefAliases, LdapExtendedResponse, LdapFilter, LdapMsg, LdapOp, LdapResult, LdapResultCode, LdapSearchRequest,
    LdapSearchResultEntry, LdapSearchScope,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex as AsyncMutex};
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Framed, FramedParts};
use tokio_util::sync::CancellationToken;

use crate::codec::{ClientCodec, RawSearch, Request, UpstreamCodec};
use crate::{answers, dirsync, rules, values, Double};

/// The StartTLS extended operation.
pub const STARTTLS_OID: &str = "1.3.6.1.4.1.1466.20037";

/// Message ids of the double's own requests to the DC, above any a client uses.
const FIRST_INTERNAL_ID: i32 = 0x4000_0000;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type ClientConn = Framed<Box<dyn Io>, ClientCodec>;
type UpstreamSink = SplitSink<Framed<TlsStream<TcpStream>, UpstreamCodec>, Request>;

/// A client on the LDAPS port.
pub(crate) async fn serve_ldaps(stream: TcpStream, double: Arc<Double>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let tls = double.acceptor.accept(stream).await?;
    run(Framed::new(Box::new(tls), ClientCodec), None, double).await
}

/// A client on the plain port: StartTLS first, or plain LDAP (the DC
/// behind is still reached over LDAPS).
pub(crate) async fn serve_ldap(stream: TcpStream, double: Arc<Double>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, ClientCodec);
    let Some(first) = framed.next().await.transpose()? else {
        return Ok(());
    };
    if let Request::Msg(LdapMsg {
        msgid,
        op: LdapOp::ExtendedRequest(req),
        ..
    }) = &first
    {
        if req.name == STARTTLS_OID {
            let ok = LdapExtendedResponse::new_success(Some(STARTTLS_OID), None);
            framed.send(LdapMsg::new(*msgid, LdapOp::ExtendedResponse(ok))).await?;
            let parts = framed.into_parts();
            if !parts.read_buf.is_empty() {
                return Err(io::Error::other("the client sent data before the TLS handshake"));
            }
            let tls = double.acceptor.accept(parts.io).await?;
            return run(Framed::new(Box::new(tls), ClientCodec), None, double).await;
        }
    }
    let parts = framed.into_parts();
    let mut boxed = FramedParts::new::<LdapMsg>(Box::new(parts.io) as Box<dyn Io>, ClientCodec);
    boxed.read_buf = parts.read_buf;
    run(Framed::from_parts(boxed), Some(first), double).await
}

/// What the double knows of one client connection.
pub(crate) struct Session {
    pub(crate) double: Arc<Double>,
    upstream: AsyncMutex<UpstreamSink>,
    client: mpsc::UnboundedSender<LdapMsg>,
    routes: Mutex<HashMap<i32, mpsc::UnboundedSender<LdapMsg>>>,
    next_internal: AtomicI32,
    bind_name: Mutex<Option<String>>,
    privileged: AsyncMutex<Option<bool>>,
}

async fn run(client: ClientConn, first: Option<Request>, double: Arc<Double>) -> io::Result<()> {
    let upstream = Framed::new(double.upstream.connect().await?, UpstreamCodec);
    let (up_sink, mut up_stream) = upstream.split();
    let (mut client_sink, mut client_stream) = client.split();
    let (client_tx, mut client_rx) = mpsc::unbounded_channel::<LdapMsg>();
    let session = Arc::new(Session {
        double,
        upstream: AsyncMutex::new(up_sink),
        client: client_tx,
        routes: Mutex::new(HashMap::new()),
        next_internal: AtomicI32::new(FIRST_INTERNAL_ID),
        bind_name: Mutex::new(None),
        privileged: AsyncMutex::new(None),
    });
    let closed = CancellationToken::new();

    let writer_closed = closed.clone();
    let writer = tokio::spawn(async move {
        while let Some(m) = client_rx.recv().await {
            if client_sink.send(m).await.is_err() {
                break;
            }
        }
        writer_closed.cancel();
    });
    let reader_session = session.clone();
    let reader_closed = closed.clone();
    let reader = tokio::spawn(async move {
        while let Some(m) = up_stream.next().await {
            match m {
                Ok(m) => reader_session.route(m),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the DC's answer; closing the client's connection");
                    break;
                }
            }
        }
        // The DC went away: every operation waiting on it ends.
        reader_session.lock_routes().clear();
        reader_closed.cancel();
    });

    let mut next = first;
    loop {
        let request = match next.take() {
            Some(m) => m,
            None => tokio::select! {
                m = client_stream.next() => match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cannot read the client's request; closing its connection");
                        break;
                    }
                    None => break,
                },
                () = closed.cancelled() => break,
            },
        };
        let msg = match request {
            Request::Msg(m) => m,
            Request::RawSearch(raw) => {
                let s = session.clone();
                tokio::spawn(async move { s.raw_search(raw).await });
                continue;
            }
        };
        match &msg.op {
            LdapOp::UnbindRequest => {
                session.send_upstream(Request::Msg(msg)).await.ok();
                break;
            }
            LdapOp::AbandonRequest(_) => {
                session.send_upstream(Request::Msg(msg)).await.ok();
            }
            // A bind changes who every later operation runs as: it runs alone.
            LdapOp::BindRequest(_) => session.bind(msg).await,
            LdapOp::ExtendedRequest(e) if e.name == STARTTLS_OID => {
                session.reply_result(
                    &msg,
                    LdapResultCode::OperationsError,
                    "StartTLS must be the first operation on a connection",
                );
            }
            _ => {
                let s = session.clone();
                tokio::spawn(async move { s.handle(msg).await });
            }
        }
    }
    reader.abort();
    drop(session);
    // Let what is queued for the client go out.
    tokio::time::timeout(std::time::Duration::from_secs(5), writer)
        .await
        .ok();
    Ok(())
}

fn is_final(op: &LdapOp) -> bool {
    !matches!(
        op,
        LdapOp::SearchResultEntry(_) | LdapOp::SearchResultReference(_) | LdapOp::IntermediateResponse(_)
    )
}

impl Session {
    fn lock_routes(&self) -> std::sync::MutexGuard<'_, HashMap<i32, mpsc::UnboundedSender<LdapMsg>>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn route(&self, m: LdapMsg) {
        let mut routes = self.lock_routes();
        let last = is_final(&m.op);
        match routes.get(&m.msgid) {
            Some(tx) => {
                let id = m.msgid;
                tx.send(m).ok();
                if last {
                    routes.remove(&id);
                }
            }
            // An unsolicited notification (message id 0) is the client's too.
            None if m.msgid == 0 => self.reply(m),
            None => {}
        }
    }

    async fn send_upstream(&self, req: Request) -> io::Result<()> {
        self.upstream.lock().await.send(req).await
    }

    /// Sends `msg` to the DC; its responses arrive on the returned channel,
    /// which ends after the final one (or when the DC goes away).
    pub(crate) async fn exchange(&self, msg: LdapMsg) -> io::Result<mpsc::UnboundedReceiver<LdapMsg>> {
        let id = msg.msgid;
        self.exchange_request(id, Request::Msg(msg)).await
    }

    async fn exchange_request(&self, id: i32, req: Request) -> io::Result<mpsc::UnboundedReceiver<LdapMsg>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock_routes().insert(id, tx);
        if let Err(e) = self.send_upstream(req).await {
            self.lock_routes().remove(&id);
            return Err(e);
        }
        Ok(rx)
    }

    /// Sends a message to the client.
    pub(crate) fn reply(&self, m: LdapMsg) {
        self.client.send(m).ok();
    }

    /// Answers `request` with a result of its own kind.
    pub(crate) fn reply_result(&self, request: &LdapMsg, code: LdapResultCode, message: &str) {
        if let Some(op) = answers::response_for(&request.op, code, message) {
            self.reply(LdapMsg::new(request.msgid, op));
        }
    }

    /// Forwards `msg` and passes every response back untouched.
    pub(crate) async fn relay(&self, msg: LdapMsg) {
        let request = msg.clone();
        let mut answered = false;
        if let Ok(mut rx) = self.exchange(msg).await {
            while let Some(m) = rx.recv().await {
                answered = is_final(&m.op);
                self.reply(m);
            }
        }
        if !answered {
            self.reply_unavailable(&request);
        }
    }

    pub(crate) fn reply_unavailable(&self, request: &LdapMsg) {
        self.reply_result(
            request,
            LdapResultCode::Unavailable,
            "the domain controller behind the AD double closed the connection",
        );
    }

    async fn bind(&self, msg: LdapMsg) {
        let LdapOp::BindRequest(req) = &msg.op else {
            return;
        };
        let name = req.dn.clone();
        let request = msg.clone();
        let Ok(mut rx) = self.exchange(msg).await else {
            self.reply_unavailable(&request);
            return;
        };
        while let Some(m) = rx.recv().await {
            if let LdapOp::BindResponse(r) = &m.op {
                let ok = r.res.code == LdapResultCode::Success && !name.is_empty();
                *self.bind_name.lock().unwrap_or_else(|e| e.into_inner()) = ok.then(|| name.clone());
                *self.privileged.lock().await = None;
            }
            self.reply(m);
        }
    }

    async fn handle(self: Arc<Self>, msg: LdapMsg) {
        match &msg.op {
            LdapOp::SearchRequest(_) if dirsync::requested(&msg) => dirsync::search(&self, msg).await,
            LdapOp::SearchRequest(_) => self.search(msg).await,
            LdapOp::AddRequest(_) | LdapOp::ModifyRequest(_) | LdapOp::ModifyDNRequest(_) | LdapOp::DelRequest(_) => {
                match rules::check_write(&self, &msg).await {
                    Some(refusal) => {
                        tracing::info!(rule = refusal.rule, target = %rules::target(&msg.op), "refused as Windows AD does");
                        if let Some(op) = refusal.response_to(&msg.op) {
                            self.reply(LdapMsg::new(msg.msgid, op));
                        }
                    }
                    None => self.relay(msg).await,
                }
            }
            _ => self.relay(msg).await,
        }
    }

    /// A search other than DirSync: pages capped at MaxPageSize, a
    /// non-paged search cut at it with sizeLimitExceeded, and every
    /// attribute capped at MaxValRange (the rootDSE excepted).
    async fn search(&self, mut msg: LdapMsg) {
        let LdapOp::SearchRequest(req) = &msg.op else {
            return;
        };
        let root_dse = req.base.is_empty() && req.scope == LdapSearchScope::Base;
        let max = self.page_cap();
        let mut paged = false;
        for c in &mut msg.ctrl {
            if let LdapControl::SimplePagedResults { size, .. } = c {
                paged = true;
                *size = (*size).min(max.unwrap_or(i64::MAX));
            }
        }
        let id = msg.msgid;
        self.capped_search(id, root_dse, paged, Request::Msg(msg)).await;
    }

    /// A search kept as BER (a binary filter value): the same caps.
    async fn raw_search(&self, mut raw: RawSearch) {
        let root_dse = raw.base.is_empty() && raw.scope == 0;
        let paged = raw.page_size().is_some();
        if let Some(max) = self.page_cap() {
            raw.cap_page_size(max);
        }
        let id = raw.msgid;
        self.capped_search(id, root_dse, paged, Request::RawSearch(raw)).await;
    }

    fn page_cap(&self) -> Option<i64> {
        self.double
            .limits
            .max_page_size
            .map(|m| i64::try_from(m).unwrap_or(i64::MAX))
    }

    async fn capped_search(&self, id: i32, root_dse: bool, paged: bool, req: Request) {
        let limits = &self.double.limits;
        if paged && !limits.page_delay.is_zero() {
            tokio::time::sleep(limits.page_delay).await;
        }
        if paged && self.double.busy_now() {
            tracing::info!("answered a page busy, as asked (--busy-page)");
            let busy = LdapResult {
                code: LdapResultCode::Busy,
                matcheddn: String::new(),
                message: "the AD double answered this page busy, as asked (--busy-page)".into(),
                referral: Vec::new(),
            };
            return self.reply(LdapMsg::new(id, LdapOp::SearchResultDone(busy)));
        }
        let cap = if paged || root_dse { None } else { limits.max_page_size };
        let ranges = if root_dse { None } else { limits.max_val_range };
        let unavailable = || {
            let done = LdapResult {
                code: LdapResultCode::Unavailable,
                matcheddn: String::new(),
                message: "the domain controller behind the AD double closed the connection".into(),
                referral: Vec::new(),
            };
            LdapMsg::new(id, LdapOp::SearchResultDone(done))
        };
        let Ok(mut rx) = self.exchange_request(id, req).await else {
            return self.reply(unavailable());
        };
        let (mut sent, mut over) = (0usize, false);
        while let Some(mut m) = rx.recv().await {
            match &mut m.op {
                LdapOp::SearchResultEntry(e) => {
                    if cap.is_some_and(|c| sent >= c) {
                        over = true;
                        continue;
                    }
                    if let Some(n) = ranges {
                        values::cap_entry(e, n);
                    }
                    sent += 1;
                }
                LdapOp::SearchResultDone(r) => {
                    if over && r.code == LdapResultCode::Success {
                        r.code = LdapResultCode::SizeLimitExceeded;
                    }
                    self.reply(m);
                    return;
                }
                _ => {}
            }
            self.reply(m);
        }
        self.reply(unavailable());
    }

    /// A search of the double's own, as the bound account.
    pub(crate) async fn search_internal(
        &self,
        base: &str,
        scope: LdapSearchScope,
        filter: LdapFilter,
        attrs: &[&str],
    ) -> io::Result<(Vec<LdapSearchResultEntry>, LdapResult)> {
        let id = self.next_internal.fetch_add(1, Ordering::Relaxed);
        let req = LdapSearchRequest {
            base: base.to_owned(),
            scope,
            aliases: LdapDerefAliases::Never,
            sizelimit: 0,
            timelimit: 0,
            typesonly: false,
            filter,
            attrs: attrs.iter().map(|a| (*a).to_owned()).collect(),
        };
        let mut rx = self.exchange(LdapMsg::new(id, LdapOp::SearchRequest(req))).await?;
        let mut entries = Vec::new();
        while let Some(m) = rx.recv().await {
            match m.op {
                LdapOp::SearchResultEntry(e) => entries.push(e),
                LdapOp::SearchResultDone(r) => return Ok((entries, r)),
                _ => {}
            }
        }
        Err(io::Error::other("the DC closed the connection"))
    }

    /// One entry by DN, `None` when it does not exist (or cannot be read).
    pub(crate) async fn read(&self, dn: &str, attrs: &[&str]) -> io::Result<Option<LdapSearchResultEntry>> {
        let all = LdapFilter::Present("objectClass".into());
        let (mut entries, _) = self.search_internal(dn, LdapSearchScope::Base, all, attrs).await?;
        Ok(entries.pop())
    }

    /// The domain's naming context, from the rootDSE.
    pub(crate) async fn naming_context(&self) -> io::Result<String> {
        let e = self.read("", &["defaultNamingContext"]).await?;
        Ok(e.as_ref()
            .and_then(|e| first_value(e, "defaultNamingContext"))
            .unwrap_or_default())
    }

    /// Whether the bound account is privileged (`adminCount=1`: a member of
    /// Domain Admins or another protected group), so that AdminSDHolder's
    /// ACL lets it write protected objects.
    pub(crate) async fn privileged(&self) -> bool {
        let mut cached = self.privileged.lock().await;
        if let Some(p) = *cached {
            return p;
        }
        let p = self.look_up_privileged().await.unwrap_or(false);
        *cached = Some(p);
        p
    }

    async fn look_up_privileged(&self) -> io::Result<bool> {
        let Some(name) = self.bind_name.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(false);
        };
        let account = if let Some((_, user)) = name.split_once('\\') {
            Some(LdapFilter::Equality("sAMAccountName".into(), user.to_owned()))
        } else if let Some((user, _)) = name.split_once('@') {
            Some(LdapFilter::Or(vec![
                LdapFilter::Equality("userPrincipalName".into(), name.clone()),
                LdapFilter::Equality("sAMAccountName".into(), user.to_owned()),
            ]))
        } else {
            None
        };
        let entry = match account {
            Some(filter) => {
                let nc = self.naming_context().await?;
                let (mut found, _) = self
                    .search_internal(&nc, LdapSearchScope::Subtree, filter, &["adminCount"])
                    .await?;
                found.pop()
            }
            None => self.read(&name, &["adminCount"]).await?,
        };
        Ok(entry.is_some_and(|e| first_value(&e, "adminCount").as_deref() == Some("1")))
    }
}

/// The first value of `attr` (any case) as text.
pub(crate) fn first_value(e: &LdapSearchResultEntry, attr: &str) -> Option<String> {
    e.attributes
        .iter()
        .find(|a| a.atype.eq_ignore_ascii_case(attr))
        .and_then(|a| a.vals.first())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Every value of `attr` (any case) as text.
pub(crate) fn all_values(e: &LdapSearchResultEntry, attr: &str) -> Vec<String> {
    e.attributes
        .iter()
        .filter(|a| a.atype.eq_ignore_ascii_case(attr))
        .flat_map(|a| a.vals.iter().map(|v| String::from_utf8_lossy(v).into_owned()))
        .collect()
}
