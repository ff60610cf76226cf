//! LDAP framing for both sides of the double. Most requests decode into
//! `ldap3_proto`'s typed messages. A search whose filter carries binary
//! assertion values (`(objectGUID=\3f\a2…)`, which AD clients send all the
//! time) does not: `ldap3_proto` holds filter values as text. Such a search
//! is kept as its BER tree instead and forwarded byte for byte; its answers
//! still decode, so paging and value ranges apply to them all the same.

use std::io;

use bytes::{Buf, BytesMut};
use ldap3_lber::common::TagClass;
use ldap3_lber::parse::Parser;
use ldap3_lber::structure::{StructureTag, PL};
use ldap3_lber::universal::Types;
use ldap3_proto::proto::LdapMsg;
use tokio_util::codec::{Decoder, Encoder};

/// The largest LDAP message either side may send (a group of 100,000
/// members read whole is ~8 MB).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
const MAX_DEPTH: usize = 64;
const SEARCH_REQUEST: u64 = 3;
const PAGED_OID: &[u8] = b"1.2.840.113556.1.4.319";

/// A request as the double holds it.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    /// Decoded.
    Msg(LdapMsg),
    /// A search kept as its BER tree.
    RawSearch(RawSearch),
}

/// A search request `ldap3_proto` cannot represent, with what the double reads of it.
#[derive(Debug, Clone)]
pub(crate) struct RawSearch {
    pub msgid: i32,
    pub base: String,
    /// 0 base, 1 one level, 2 subtree.
    pub scope: i64,
    pub tag: StructureTag,
}

impl RawSearch {
    fn from_tag(tag: StructureTag) -> Option<RawSearch> {
        let PL::C(parts) = &tag.payload else { return None };
        let msgid = i32::try_from(int(parts.first()?)?).ok()?;
        let op = parts.get(1)?;
        if op.class != TagClass::Application || op.id != SEARCH_REQUEST {
            return None;
        }
        let PL::C(fields) = &op.payload else { return None };
        let base = String::from_utf8(primitive(fields.first()?)?.to_vec()).ok()?;
        let scope = int(fields.get(1)?)?;
        Some(RawSearch {
            msgid,
            base,
            scope,
            tag,
        })
    }

    /// The paged-results control's page size, if the search is paged.
    pub fn page_size(&self) -> Option<i64> {
        let (size, _) = self.paged_control()?;
        Some(size)
    }

    /// Caps the paged-results control's page size at `max`.
    pub fn cap_page_size(&mut self, max: i64) {
        let Some((size, cookie)) = self.paged_control() else {
            return;
        };
        if size <= max {
            return;
        }
        let value = paged_value(max, &cookie);
        if let Some(v) = self.paged_value_mut() {
            *v = value;
        }
    }

    fn controls(&self) -> Option<&Vec<StructureTag>> {
        let PL::C(parts) = &self.tag.payload else { return None };
        let ctrls = parts.get(2).filter(|t| t.class == TagClass::Context && t.id == 0)?;
        match &ctrls.payload {
            PL::C(c) => Some(c),
            PL::P(_) => None,
        }
    }

    fn paged_control(&self) -> Option<(i64, Vec<u8>)> {
        for c in self.controls()? {
            let PL::C(f) = &c.payload else { continue };
            if f.first().and_then(primitive) != Some(PAGED_OID) {
                continue;
            }
            let value = f
                .iter()
                .skip(1)
                .find(|t| t.id == Types::OctetString as u64)
                .and_then(primitive)?;
            let (_, inner) = Parser::new(4).parse(value).ok()?;
            let PL::C(seq) = inner.payload else { return None };
            return Some((int(seq.first()?)?, primitive(seq.get(1)?)?.to_vec()));
        }
        None
    }

    fn paged_value_mut(&mut self) -> Option<&mut Vec<u8>> {
        let PL::C(parts) = &mut self.tag.payload else {
            return None;
        };
        let PL::C(ctrls) = &mut parts.get_mut(2)?.payload else {
            return None;
        };
        for c in ctrls {
            let PL::C(f) = &mut c.payload else { continue };
            if f.first().and_then(primitive) != Some(PAGED_OID) {
                continue;
            }
            let v = f.iter_mut().skip(1).find(|t| t.id == Types::OctetString as u64)?;
            return match &mut v.payload {
                PL::P(bytes) => Some(bytes),
                PL::C(_) => None,
            };
        }
        None
    }
}

fn primitive(t: &StructureTag) -> Option<&[u8]> {
    match &t.payload {
        PL::P(v) => Some(v),
        PL::C(_) => None,
    }
}

fn int(t: &StructureTag) -> Option<i64> {
    let bytes = primitive(t)?;
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    let mut v: i64 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for b in bytes {
        v = (v << 8) | i64::from(*b);
    }
    Some(v)
}

/// `SEQUENCE { INTEGER size, OCTET STRING cookie }`, BER.
fn paged_value(size: i64, cookie: &[u8]) -> Vec<u8> {
    let size_bytes = {
        let all = size.to_be_bytes();
        let mut start = 0;
        while start < 7
            && ((all[start] == 0 && all[start + 1] & 0x80 == 0) || (all[start] == 0xff && all[start + 1] & 0x80 != 0))
        {
            start += 1;
        }
        all[start..].to_vec()
    };
    let mut inner = vec![0x02, size_bytes.len() as u8];
    inner.extend_from_slice(&size_bytes);
    inner.push(0x04);
    push_len(&mut inner, cookie.len());
    inner.extend_from_slice(cookie);
    let mut out = vec![0x30];
    push_len(&mut out, inner.len());
    out.extend(inner);
    out
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
    out.push(0x80 | bytes.len() as u8);
    out.extend(bytes);
}

/// One BER element off the front of `buf`, if it has arrived whole.
fn next_tag(buf: &mut BytesMut) -> io::Result<Option<StructureTag>> {
    if buf.len() > 2 * MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "an LDAP message over the size limit",
        ));
    }
    let (rest, tag) = match Parser::new(MAX_DEPTH).parse(buf) {
        Ok(r) => r,
        Err(e) if e.is_incomplete() => return Ok(None),
        Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed BER")),
    };
    let used = buf.len() - rest.len();
    if used > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "an LDAP message over the size limit",
        ));
    }
    buf.advance(used);
    Ok(Some(tag))
}

fn decode_msg(tag: StructureTag) -> io::Result<LdapMsg> {
    LdapMsg::try_from(tag).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// The client side: requests in, responses out.
#[derive(Debug, Default)]
pub(crate) struct ClientCodec;

impl Decoder for ClientCodec {
    type Item = Request;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Request>> {
        let Some(tag) = next_tag(buf)? else { return Ok(None) };
        match LdapMsg::try_from(tag.clone()) {
            Ok(m) => Ok(Some(Request::Msg(m))),
            Err(e) => match RawSearch::from_tag(tag) {
                Some(raw) => Ok(Some(Request::RawSearch(raw))),
                None => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            },
        }
    }
}

impl Encoder<LdapMsg> for ClientCodec {
    type Error = io::Error;

    fn encode(&mut self, msg: LdapMsg, buf: &mut BytesMut) -> io::Result<()> {
        ldap3_lber::write::encode_into(buf, msg.into())
    }
}

/// The DC side: requests out (decoded or raw), responses in.
#[derive(Debug, Default)]
pub(crate) struct UpstreamCodec;

impl Decoder for UpstreamCodec {
    type Item = LdapMsg;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<LdapMsg>> {
        next_tag(buf)?.map(decode_msg).transpose()
    }
}

impl Encoder<Request> for UpstreamCodec {
    type Error = io::Error;

    fn encode(&mut self, req: Request, buf: &mut BytesMut) -> io::Result<()> {
        match req {
            Request::Msg(m) => ldap3_lber::write::encode_into(buf, m.into()),
            Request::RawSearch(r) => ldap3_lber::write::encode_into(buf, r.tag),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ldapsearch`-style bytes of a paged search for `(objectGUID=<16 bytes>)`.
    fn guid_search(page: u8) -> Vec<u8> {
        let mut filter = vec![0xa3, 0x1e, 0x04, 0x0a];
        filter.extend_from_slice(b"objectGUID");
        filter.extend_from_slice(&[0x04, 0x10]);
        filter.extend_from_slice(&[0xff, 0xfe, 0x80, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let mut op = vec![0x04, 0x0a];
        op.extend_from_slice(b"DC=x,DC=te");
        op.extend_from_slice(&[
            0x0a, 0x01, 0x02, 0x0a, 0x01, 0x00, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x01, 0x01, 0x00,
        ]);
        op.extend(filter);
        op.extend_from_slice(&[0x30, 0x00]);
        let mut search = vec![0x63, op.len() as u8];
        search.extend(op);
        let value = paged_value(i64::from(page), b"");
        let mut ctrl = vec![0x04, PAGED_OID.len() as u8];
        ctrl.extend_from_slice(PAGED_OID);
        ctrl.push(0x04);
        ctrl.push(value.len() as u8);
        ctrl.extend(value);
        let mut ctrls = vec![0x30, ctrl.len() as u8];
        ctrls.extend(ctrl);
        let mut all = vec![0x02, 0x01, 0x07];
        all.extend(search);
        all.push(0xa0);
        all.push(ctrls.len() as u8);
        all.extend(ctrls);
        let mut msg = vec![0x30, all.len() as u8];
        msg.extend(all);
        msg
    }

    #[test]
    fn a_search_with_a_binary_filter_value_is_kept_whole_and_its_page_capped() {
        let bytes = guid_search(100);
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 3]);
        assert!(ClientCodec.decode(&mut buf).unwrap().is_none(), "incomplete");
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(Request::RawSearch(mut raw)) = ClientCodec.decode(&mut buf).unwrap() else {
            panic!("not a raw search")
        };
        assert_eq!((raw.msgid, raw.base.as_str(), raw.scope), (7, "DC=x,DC=te", 2));
        assert_eq!(raw.page_size(), Some(100));
        raw.cap_page_size(5);
        assert_eq!(raw.page_size(), Some(5));
        // Forwarded, the filter's bytes are untouched.
        let mut out = BytesMut::new();
        UpstreamCodec.encode(Request::RawSearch(raw), &mut out).unwrap();
        assert!(out.windows(4).any(|w| w == [0xff, 0xfe, 0x80, 0x00]));
        assert_eq!(out.len(), bytes.len());
    }

    #[test]
    fn page_values_are_minimal_ber() {
        assert_eq!(paged_value(5, b""), vec![0x30, 0x05, 0x02, 0x01, 0x05, 0x04, 0x00]);
        assert_eq!(paged_value(1000, b"ab")[2..6], [0x02, 0x02, 0x03, 0xe8]);
        assert_eq!(paged_value(128, b"")[2..6], [0x02, 0x02, 0x00, 0x80]);
    }
}
