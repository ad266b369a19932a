# Warnings and sanitizers for Airlock's own targets (never for generated code).
function(airlock_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra)
endfunction()

if(AIRLOCK_SANITIZE)
  # vptr is off: it needs typeinfo of objects created inside uninstrumented shared
  # libraries (libnode is built without RTTI; spdlog's control blocks) and misfires there.
  add_compile_options(-fsanitize=address,undefined -fno-sanitize=vptr -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
  add_compile_definitions(AIRLOCK_SANITIZE=1)
endif()
