#include "experiments/output_file.h"

#include <unistd.h>

#include <filesystem>

#include "framework/hdf5.h"

namespace normlab {

namespace fs = std::filesystem;

void check_output_file(const std::string& path, const std::string& format, const std::string& kind) {
  const fs::path p(path);
  NL_CHECK(!path.empty() && p.has_filename(), "cannot write the ", kind, " to '", path, "': it names a folder");
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(dir, ec);
  NL_CHECK(!ec && fs::is_directory(dir) && ::access(dir.c_str(), W_OK) == 0, "cannot write the ", kind, " to '", path,
           "': folder '", dir.string(), "' is not writable", ec ? " (" + ec.message() + ")" : "");
  if (!fs::exists(p, ec)) return;
  NL_CHECK(!fs::is_directory(p, ec), "cannot write the ", kind, " to '", path, "': it is a folder");
  NL_CHECK(::access(p.c_str(), W_OK) == 0, "cannot write the ", kind, " to '", path, "': the file is not writable");
  std::string found;
  try {
    const H5File f(path, H5File::Mode::read);
    found = has_attribute(f, "/", "format") ? read_attribute_string(f, "/", "format") : "";
  } catch (const Error&) {
    found = "";  // not HDF5, or unreadable: not ours to overwrite
  }
  NL_CHECK(found == format, "refusing to overwrite '", path, "': it is not a normlab ", kind,
           found.empty() ? std::string(" file") : " (it is a " + found + " file)",
           "; choose another path or remove it");
}

}  // namespace normlab
