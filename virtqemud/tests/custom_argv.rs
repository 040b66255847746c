//! libvirt's QEMU namespace: `<qemu:commandline>` arguments reach QEMU's argv (here a
//! second QMP monitor that answers), `<qemu:env>` its environment, the domain is
//! logged as tainted, and the XML comes back with the namespace.

mod support;

use support::{domain, qemud, Probe};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_commandline_args_and_env_reach_qemu() {
    let q = qemud(BIN).await;
    let (daemon, conn, qc) = (&q.daemon, &q.conn, &q.qc);
    let extra = daemon.dirs.root.path().join("extra.qmp");
    let xml = format!(
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\
         <name>custom</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <qemu:commandline><qemu:arg value='-chardev'/>\
         <qemu:arg value='socket,id=extra,path={},server=on,wait=off'/>\
         <qemu:arg value='-mon'/><qemu:arg value='chardev=extra,mode=control'/>\
         <qemu:env name='VIRT_RS_CUSTOM' value='yes please'/></qemu:commandline></domain>",
        extra.display()
    );
    let path = qc.domain_define_xml(&xml).await.expect("define");
    let d = domain(conn, &path).await;
    let back = d.get_xml_desc(2).await.expect("xml");
    assert!(
        back.contains("xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'")
            && back.contains("<qemu:arg value='chardev=extra,mode=control'/>")
            && back.contains("<qemu:env name='VIRT_RS_CUSTOM' value='yes please'/>"),
        "{back}"
    );
    d.create(0).await.expect("start");

    // The extra monitor is QEMU's own: it greets and takes commands.
    let status = Probe::connect(&extra).execute(serde_json::json!({"execute": "query-status"}));
    assert_eq!(status["return"]["status"], "running", "{status}");

    let pid =
        std::fs::read_to_string(daemon.dirs.runtime.join("qemu/custom.pid")).expect("pidfile");
    let environ = std::fs::read(format!("/proc/{}/environ", pid.trim())).expect("environ");
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == b"VIRT_RS_CUSTOM=yes please"),
        "QEMU's environment lacks VIRT_RS_CUSTOM"
    );
    let log = std::fs::read_to_string(daemon.dirs.state.join("log/qemu/custom.log")).expect("log");
    assert!(log.contains("is tainted: custom-argv"), "{log}");
    d.destroy(0).await.expect("destroy");

    // A bad variable name is refused at define, naming it.
    let e = qc
        .domain_define_xml(
            "<domain type='qemu' xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'>\
             <name>badenv</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os>\
             <q:commandline><q:env name='A=B' value='x'/></q:commandline></domain>",
        )
        .await
        .expect_err("bad env name");
    assert!(e.to_string().contains("A=B"), "{e}");
}
