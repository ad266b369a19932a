// The README's host program: spawns one sandboxed extension, loads a skill, calls it.
//   hello_host SKILL.wasm [NAME]
#include <airlock/host.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " SKILL.wasm [NAME]\n";
    return 2;
  }
  try {
    airlock::Host host;                                // msgpack transport by default
    airlock::ExtensionOptions eo;
    eo.name = "skills";
    auto ext = host.spawn(eo).value();                 // throws airlock::BadResultAccess on an error
    if (auto st = ext.load_skill("hello", argv[1]); !st.ok()) {
      std::cerr << st.error().to_string() << "\n";
      return 1;
    }
    auto r = ext.call("hello", argc > 2 ? argv[2] : "Ada");  // Result<std::string>
    if (!r.ok()) {
      std::cerr << r.error().to_string() << "\n";      // e.g. "InvalidArgument: ... empty name"
      return 1;
    }
    std::cout << *r << "\n";
    return 0;
  } catch (const airlock::BadResultAccess& e) {
    std::cerr << e.what() << "\n";                     // the Error's text: code and message
    return 1;
  }
}
