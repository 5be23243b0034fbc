// placeholder: being written
#include "drdm/network.h"
