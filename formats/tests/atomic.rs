//! Atomic outputs: nothing appears under the final name until commit, and a failed
//! or abandoned write leaves nothing behind.

use std::io::Write;
use std::path::Path;

use quern_formats::atomic::{AtomicDir, AtomicError, AtomicFile};
use quern_formats::gguf::{GgufError, GgufFile, TensorSpec, Value, Writer};
use quern_formats::GgmlType;

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn commit_leaves_exactly_the_final_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let mut f = AtomicFile::create(&path).unwrap();
    assert_eq!(f.path(), path);
    let tmp_name = f
        .temp_path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(tmp_name.starts_with(".out.gguf.tmp-"), "{tmp_name}");
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8 + 1).collect();
    f.write_all(&data).unwrap();
    assert!(!path.exists(), "final name must not exist before commit");
    assert_eq!(entries(dir.path()), [tmp_name]);
    f.commit().unwrap();
    assert_eq!(entries(dir.path()), ["out.gguf"]);
    assert_eq!(std::fs::read(&path).unwrap(), data);
}

#[test]
fn commit_replaces_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bin");
    std::fs::write(&path, b"old").unwrap();
    let mut f = AtomicFile::create(&path).unwrap();
    f.write_all(b"new contents").unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"old",
        "old file untouched until commit"
    );
    f.commit().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
    assert_eq!(entries(dir.path()), ["x.bin"]);
}

#[test]
fn drop_without_commit_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    {
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(&[1; 100_000]).unwrap();
        f.flush().unwrap();
    }
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

#[test]
fn missing_or_unwritable_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/out.gguf");
    let e = AtomicFile::create(&missing).err().unwrap();
    assert!(matches!(e, AtomicError::NoFolder { .. }), "{e}");
    assert!(e.to_string().contains("no/such/dir"), "{e}");

    let file = dir.path().join("plain");
    std::fs::write(&file, b"").unwrap();
    let e = AtomicFile::create(&file.join("out.gguf")).err().unwrap();
    assert!(matches!(e, AtomicError::NotAFolder { .. }), "{e}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        // root ignores permissions; only assert when the folder really is read-only to us
        if std::fs::write(ro.join("probe"), b"").is_err() {
            let e = AtomicFile::create(&ro.join("out.gguf")).err().unwrap();
            assert!(matches!(e, AtomicError::NotWritable { .. }), "{e}");
            assert!(e.to_string().contains("ro"), "{e}");
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn full_disk_during_a_gguf_write_surfaces_the_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let specs = [
        TensorSpec::new("a", vec![4096, 64], GgmlType::F32),
        TensorSpec::new("b", vec![4096, 64], GgmlType::F32),
    ];
    let md = [(
        "general.architecture".to_string(),
        Value::String("llama".into()),
    )];
    let result = (|| -> Result<(), GgufError> {
        let mut out =
            AtomicFile::create(&path).map_err(|e| std::io::Error::other(e.to_string()))?;
        // Room for everything: this write must succeed.
        out.simulate_full_disk_after(12 << 20);
        let mut w = Writer::new(out, &md, &specs)?;
        let data = vec![7u8; 4096 * 64 * 4];
        w.write_tensor("a", &data)?;
        w.write_tensor("b", &data)?;
        w.finish()?
            .commit()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(())
    })();
    // 2 MiB of tensors fit in 12 MiB. Now a disk that fills after 1 MiB:
    assert!(result.is_ok());
    assert!(GgufFile::open(&path).is_ok());
    std::fs::remove_file(&path).unwrap();

    let result = (|| -> Result<(), GgufError> {
        let mut out =
            AtomicFile::create(&path).map_err(|e| std::io::Error::other(e.to_string()))?;
        out.simulate_full_disk_after(1 << 20);
        let mut w = Writer::new(out, &md, &specs)?;
        let data = vec![7u8; 4096 * 64 * 4];
        w.write_tensor("a", &data)?;
        w.write_tensor("b", &data)?;
        w.finish()?
            .commit()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(())
    })();
    let e = result.unwrap_err();
    assert!(e.to_string().contains("no space left"), "{e}");
    assert!(
        entries(dir.path()).is_empty(),
        "left behind: {:?}",
        entries(dir.path())
    );
}

#[test]
fn atomic_dir_appears_only_on_commit() {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("awq-model");
    {
        let d = AtomicDir::create(&out).unwrap();
        std::fs::write(d.join("config.json"), b"{}").unwrap();
        assert!(!out.exists());
    }
    assert!(
        entries(parent.path()).is_empty(),
        "dropped dir must be removed"
    );

    let d = AtomicDir::create(&out).unwrap();
    assert_eq!(d.path(), out);
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(d.join("sub/model.safetensors"), b"weights").unwrap();
    std::fs::write(d.join("config.json"), b"{}").unwrap();
    d.commit().unwrap();
    assert_eq!(entries(parent.path()), ["awq-model"]);
    assert_eq!(
        std::fs::read(out.join("sub/model.safetensors")).unwrap(),
        b"weights"
    );

    // Committing again replaces the old folder wholesale.
    let d = AtomicDir::create(&out).unwrap();
    std::fs::write(d.join("new.txt"), b"2").unwrap();
    d.commit().unwrap();
    assert_eq!(entries(parent.path()), ["awq-model"]);
    assert_eq!(entries(&out), ["new.txt"]);
}
