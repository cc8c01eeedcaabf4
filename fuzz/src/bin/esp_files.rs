//! Not a fuzz target: writes the ESP files of an image into a directory, for seeds.sh
//! (`esp_files IMAGE DIR`), through the same reader `inspect` uses.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [image, dir] = args.as_slice() else {
        return Err("usage: esp_files IMAGE DIR".into());
    };
    let img = imagebuild::inspect::Image::open(std::path::Path::new(image))?;
    for f in img.esp_files()? {
        let path = std::path::Path::new(dir).join(&f.path);
        std::fs::create_dir_all(path.parent().expect("a parent"))?;
        std::fs::write(path, &f.data)?;
    }
    Ok(())
}
