// placeholder: being written
#include "drdm/losses.h"
