//! virtqemud's part of `org.libvirt.Connect` at `/org/libvirt/QEMU`.

use std::sync::Arc;

use common::connect as base;
use common::error::{check_flags, BusError};
use zbus::zvariant::OwnedObjectPath;

use crate::driver::Driver;

pub struct Connect {
    pub driver: Arc<Driver>,
}

#[zbus::interface(name = "org.libvirt.Connect")]
impl Connect {
    #[zbus(property(emits_changed_signal = "false"))]
    fn version(&self) -> u64 {
        base::own_version()
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn lib_version(&self) -> u64 {
        base::LIB_VERSION
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn hostname(&self) -> String {
        base::hostname()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn encrypted(&self) -> bool {
        base::ENCRYPTED
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn secure(&self) -> bool {
        base::SECURE
    }

    #[zbus(name = "ListDomains")]
    async fn list_domains(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.list_paths(flags)?)
    }

    #[zbus(name = "DomainDefineXML")]
    async fn domain_define_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: &str,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.define(xml).await?.path.clone())
    }

    #[zbus(name = "DomainCreateXML")]
    async fn domain_create_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: &str,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.create_xml(xml, flags).await?.path.clone())
    }

    #[zbus(name = "DomainLookupByName")]
    async fn domain_lookup_by_name(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        name: &str,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.lookup_name(name)?.path.clone())
    }

    #[zbus(name = "DomainLookupByUUID")]
    async fn domain_lookup_by_uuid(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        uuid: &str,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.lookup_uuid_str(uuid)?.path.clone())
    }

    #[zbus(name = "DomainLookupByID")]
    async fn domain_lookup_by_id(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        id: i32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.lookup_id(id)?.path.clone())
    }

    #[zbus(name = "GetCapabilities")]
    async fn get_capabilities(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        Ok(crate::host_caps::capabilities(
            &self.driver.caps_cache_dir(),
            self.driver.ctx.settings.mode,
        )
        .await?)
    }

    #[zbus(name = "GetDomainCapabilities")]
    async fn get_domain_capabilities(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        emulatorbin: &str,
        arch: &str,
        machine: &str,
        virttype: &str,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(crate::host_caps::domain_capabilities(
            &self.driver.caps_cache_dir(),
            emulatorbin,
            arch,
            machine,
            virttype,
        )
        .await?)
    }

    #[zbus(name = "DomainRestore")]
    async fn domain_restore(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        from: &str,
        xml: &str,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        self.driver.restore(from, xml, flags).await?;
        Ok(())
    }

    #[zbus(name = "DomainSaveImageGetXMLDesc")]
    async fn domain_save_image_get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        file: &str,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check_with_flags(&hdr, flags).await?;
        Ok(self.driver.save_image_xml(file, flags).await?)
    }

    #[zbus(name = "DomainSaveImageDefineXML")]
    async fn domain_save_image_define_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        file: &str,
        xml: &str,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.save_image_define(file, xml, flags).await?)
    }

    #[zbus(name = "CompareCPU")]
    async fn compare_cpu(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml_desc: &str,
        flags: u32,
    ) -> Result<i32, BusError> {
        common::access::check(&hdr).await?;
        Ok(crate::cpu_model::compare(&self.driver.caps_cache_dir(), xml_desc, flags).await?)
    }

    #[zbus(name = "BaselineCPU")]
    async fn baseline_cpu(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml_cpus: Vec<String>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        Ok(crate::cpu_model::baseline(&self.driver.caps_cache_dir(), &xml_cpus, flags).await?)
    }

    /// libvirt's primary security driver: none is confining here (no SELinux or
    /// AppArmor labels; DAC, which only picks QEMU's user, is stacked below it), which
    /// libvirt reports as model `none`, DOI `0`.
    #[zbus(name = "NodeGetSecurityModel", out_args("secModel"))]
    async fn node_get_security_model(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<((String, String),), BusError> {
        common::access::check(&hdr).await?;
        // One `(ss)` struct on the wire, not two strings.
        Ok((("none".to_owned(), "0".to_owned()),))
    }

    /// libvirt's QEMU driver has no `domainCreateXMLWithFiles` (only LXC hands files to
    /// a guest's init): its answer is "not supported", and so is this one's.
    #[zbus(name = "DomainCreateXMLWithFiles")]
    async fn domain_create_xml_with_files(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        _xml: &str,
        _files: Vec<zbus::zvariant::OwnedFd>,
        _flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Err(common::error::VirError::new(
            common::error::ErrorCode::NoSupport,
            "virDomainCreateXMLWithFiles",
        )
        .into())
    }

    #[zbus(name = "GetCPUModelNames")]
    async fn get_cpu_model_names(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        arch: &str,
        flags: u32,
    ) -> Result<Vec<String>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.cpu_model_names(arch, flags).await?)
    }

    #[zbus(name = "GetAllDomainStats")]
    async fn get_all_domain_stats(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        stats: u32,
        flags: u32,
    ) -> Result<Vec<(String, common::typed_params::TypedParams)>, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, crate::stats::STATS_FLAGS)?;
        let groups = crate::stats::requested_groups(stats, flags)?;
        let doms = self.driver.list(flags & 0xff)?;
        let mut out = Vec::with_capacity(doms.len());
        for d in &doms {
            out.push((d.name(), self.driver.stats(d, groups).await.into()));
        }
        Ok(out)
    }

    #[zbus(signal, name = "DomainEvent")]
    pub async fn domain_event(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        domain: OwnedObjectPath,
        event: i32,
        detail: i32,
    ) -> zbus::Result<()>;
}
