// libdrdm parse-only stand-in (see README.md). ProcessGroupGloo.hpp uses nothing
// from this header.
#pragma once
