// placeholder: being written
#include "drdm/dataset.h"
