// libairlock.so is airlock_host (and what it uses) linked whole into one shared library
// (host/CMakeLists.txt); a shared library target needs one source of its own.
