//! A NIC's `<bandwidth>` (and Get/SetInterfaceParameters), applied to its tap as
//! libvirt applies it, with `tc`: traffic to the guest (`<inbound>`, the tap's egress)
//! through an htb class of the given rate, ceiling and burst; traffic from the guest
//! (`<outbound>`, the tap's ingress) policed at its rate (by nftables: see [`police`]).
//! Units are libvirt's: rates in kilobytes per second, bursts in kilobytes (tc's `kbps`
//! and `kb`).

use common::error::{ErrorCode, VirError};
use common::xml::Element;

/// One direction's limits; `average` 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rate {
    pub average: u32,
    pub peak: u32,
    pub burst: u32,
    pub floor: u32,
}

/// Both directions of one NIC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub inbound: Rate,
    pub outbound: Rate,
}

/// libvirt's parameter names (`VIR_DOMAIN_BANDWIDTH_*`), in its order.
pub const PARAMS: &[&str] = &[
    "inbound.average",
    "inbound.peak",
    "inbound.burst",
    "inbound.floor",
    "outbound.average",
    "outbound.peak",
    "outbound.burst",
];

impl Bandwidth {
    /// From a NIC's kept `<bandwidth>`, checked as libvirt's parser checks it.
    pub fn of(kept: &[Element]) -> Result<Option<Bandwidth>, VirError> {
        let Some(bw) = kept.iter().find(|c| c.name == "bandwidth") else {
            return Ok(None);
        };
        let mut b = Bandwidth::default();
        for dir in bw.elements() {
            let slot = match dir.name.as_str() {
                "inbound" => &mut b.inbound,
                "outbound" => &mut b.outbound,
                other => return Err(bad(&format!("unknown element <bandwidth><{other}>"))),
            };
            let num = |k: &str| -> Result<u32, VirError> {
                dir.get_attr(k).map_or(Ok(0), |v| {
                    v.parse().map_err(|_| {
                        bad(&format!(
                            "<{}> {k} '{v}' is not an unsigned number",
                            dir.name
                        ))
                    })
                })
            };
            *slot = Rate {
                average: num("average")?,
                peak: num("peak")?,
                burst: num("burst")?,
                floor: num("floor")?,
            };
            if slot.average == 0 && slot.floor == 0 {
                return Err(bad(&format!(
                    "Missing mandatory average or floor attributes in <{}>",
                    dir.name
                )));
            }
            if dir.name == "outbound" && slot.floor != 0 {
                return Err(bad("floor attribute is supported only for <inbound>"));
            }
        }
        Ok(Some(b))
    }

    /// The `<bandwidth>` element for it (None when it limits nothing).
    pub fn element(&self) -> Option<Element> {
        let dir = |name: &str, r: &Rate| {
            (r.average != 0 || r.floor != 0).then(|| {
                let mut e = Element::new(name);
                for (k, v) in [
                    ("average", r.average),
                    ("peak", r.peak),
                    ("burst", r.burst),
                    ("floor", r.floor),
                ] {
                    if v != 0 {
                        e = e.attr(k, v);
                    }
                }
                e
            })
        };
        let kids: Vec<Element> = [
            dir("inbound", &self.inbound),
            dir("outbound", &self.outbound),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!kids.is_empty()).then(|| {
            let mut e = Element::new("bandwidth");
            for k in kids {
                e.push(k);
            }
            e
        })
    }

    /// Puts it into a NIC's kept elements (in place of any `<bandwidth>`).
    pub fn put(&self, kept: &mut Vec<Element>) {
        let at = kept.iter().position(|c| c.name == "bandwidth");
        match (at, self.element()) {
            (Some(i), Some(e)) => kept[i] = e,
            (Some(i), None) => {
                kept.remove(i);
            }
            (None, Some(e)) => kept.push(e),
            (None, None) => {}
        }
    }

    /// libvirt's parameters, each as its number.
    pub fn params(&self) -> Vec<(&'static str, u32)> {
        let (i, o) = (&self.inbound, &self.outbound);
        let values = [
            i.average, i.peak, i.burst, i.floor, o.average, o.peak, o.burst,
        ];
        PARAMS.iter().copied().zip(values).collect()
    }

    /// With the given parameters set over the current ones (libvirt's merge); an
    /// average of 0 lifts that direction's limits.
    pub fn merged(&self, params: &[(String, u32)]) -> Result<Bandwidth, VirError> {
        let mut b = *self;
        for (k, v) in params {
            let (dir, field) = k.split_once('.').unwrap_or(("", ""));
            let r = match dir {
                "inbound" => &mut b.inbound,
                "outbound" => &mut b.outbound,
                _ => return Err(unknown(k)),
            };
            match (dir, field) {
                (_, "average") => r.average = *v,
                (_, "peak") => r.peak = *v,
                (_, "burst") => r.burst = *v,
                ("inbound", "floor") => r.floor = *v,
                _ => return Err(unknown(k)),
            }
        }
        for r in [&mut b.inbound, &mut b.outbound] {
            if r.average == 0 && r.floor == 0 {
                *r = Rate::default();
            }
        }
        Ok(b)
    }
}

fn bad(what: &str) -> VirError {
    VirError::xml(what)
}

fn unknown(k: &str) -> VirError {
    VirError::new(
        ErrorCode::ArgumentUnsupported,
        format!("parameter '{k}' not supported"),
    )
}

/// Runs one `tc` command, given as its words (a tap's name has no spaces: the tap
/// code made or checked it).
async fn tc(line: &str) -> Result<(), VirError> {
    let out = tokio::process::Command::new("tc")
        .args(line.split_whitespace())
        .output()
        .await
        .map_err(|e| VirError::system("running tc", &e))?;
    if !out.status.success() {
        return Err(VirError::operation_failed(format!(
            "tc {line}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Lifts every limit from `tap` (what is not there is no error).
pub async fn clear(tap: &str) {
    let _ = tc(&format!("qdisc del dev {tap} root")).await;
    let _ = nft(&["delete", "chain", "netdev", NFT_TABLE, tap], None).await;
}

/// Makes `tap`'s limits `bw`: the old ones go first. A floor needs the network's own
/// QoS, which virtnetworkd does not keep: refused by name.
pub async fn apply(tap: &str, bw: &Bandwidth) -> Result<(), VirError> {
    if bw.inbound.floor != 0 {
        return Err(VirError::new(
            ErrorCode::ConfigUnsupported,
            format!("<bandwidth><inbound floor> of the NIC on '{tap}': floors need a network's QoS, which is not implemented"),
        ));
    }
    clear(tap).await;
    let i = &bw.inbound;
    if i.average != 0 {
        tc(&format!("qdisc add dev {tap} root handle 1: htb default 1")).await?;
        let mut class = format!(
            "class add dev {tap} parent 1: classid 1:1 htb rate {}kbps",
            i.average
        );
        if i.peak != 0 {
            class.push_str(&format!(" ceil {}kbps", i.peak));
        }
        if i.burst != 0 {
            class.push_str(&format!(" burst {}kb", i.burst));
        }
        tc(&class).await?;
        // Fairness among the guest's flows, as libvirt adds it; a kernel without sfq
        // keeps htb's own queue, and the rate holds either way.
        if let Err(e) = tc(&format!(
            "qdisc add dev {tap} parent 1:1 handle 2: sfq perturb 10"
        ))
        .await
        {
            tracing::warn!(%tap, "no sfq under the rate class: {e}");
        }
        // `default 1` sends every packet to that class; libvirt's extra `fw` filter
        // sorts marked packets for a network's floors, which are not kept here.
    }
    let o = &bw.outbound;
    if o.average != 0 {
        police(tap, o).await?;
    }
    Ok(())
}

/// Our own nftables table of policers (family netdev: one chain per tap, hooked at
/// the tap's ingress, which is the guest's outbound traffic).
const NFT_TABLE: &str = "virtqemud_bw";

/// Traffic from the guest over its `<outbound>` rate is dropped. libvirt polices it
/// with tc's `police` action, a module kernels may lack (this one does); nftables'
/// `limit` does the same at the same place. Rates are tc's kilobytes (1000 bytes) per
/// second, the burst its kilobytes (1024 bytes).
async fn police(tap: &str, o: &Rate) -> Result<(), VirError> {
    let burst = if o.burst != 0 { o.burst } else { o.average };
    let script = format!(
        "table netdev {NFT_TABLE} {{\n chain {tap} {{\n  type filter hook ingress device \"{tap}\" priority 0; policy accept;\n  limit rate over {} bytes/second burst {} bytes drop\n }}\n}}\n",
        u64::from(o.average) * 1000,
        u64::from(burst) * 1024
    );
    nft(&["-f", "-"], Some(&script)).await
}

async fn nft(args: &[&str], stdin: Option<&str>) -> Result<(), VirError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| VirError::system("running nft", &e))?;
    if let (Some(mut w), Some(text)) = (child.stdin.take(), stdin) {
        w.write_all(text.as_bytes())
            .await
            .map_err(|e| VirError::system("writing to nft", &e))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| VirError::system("running nft", &e))?;
    if !out.status.success() {
        return Err(VirError::operation_failed(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(xml: &str) -> Vec<Element> {
        vec![common::xml::parse(xml).expect("xml")]
    }

    #[test]
    fn bandwidth_reads_merges_and_writes_as_libvirt() {
        let b = Bandwidth::of(&kept(
            "<bandwidth><inbound average='1000' peak='5000' burst='1024'/><outbound average='128'/></bandwidth>",
        ))
        .expect("parse")
        .expect("some");
        assert_eq!(b.inbound.peak, 5000);
        assert_eq!(b.params()[4], ("outbound.average", 128));
        let m = b
            .merged(&[
                ("outbound.average".into(), 0),
                ("inbound.burst".into(), 2048),
            ])
            .expect("merge");
        assert_eq!(m.outbound, Rate::default());
        assert_eq!(m.inbound.burst, 2048);
        let mut k = kept("<bandwidth><outbound average='1'/></bandwidth>");
        m.put(&mut k);
        assert_eq!(
            k[0].to_xml(),
            "<bandwidth>\n  <inbound average='1000' peak='5000' burst='2048'/>\n</bandwidth>\n"
        );
        Bandwidth::default().put(&mut k);
        assert!(k.is_empty());
        for (xml, says) in [
            (
                "<bandwidth><inbound peak='5'/></bandwidth>",
                "Missing mandatory average",
            ),
            (
                "<bandwidth><outbound average='5' floor='1'/></bandwidth>",
                "floor",
            ),
            ("<bandwidth><inbound average='x'/></bandwidth>", "'x'"),
            ("<bandwidth><sideways average='1'/></bandwidth>", "sideways"),
        ] {
            let e = Bandwidth::of(&kept(xml)).expect_err(xml).to_string();
            assert!(e.contains(says), "{xml}: {e}");
        }
        let e = b
            .merged(&[("outbound.floor".into(), 1)])
            .expect_err("floor")
            .to_string();
        assert!(e.contains("'outbound.floor' not supported"), "{e}");
    }
}
