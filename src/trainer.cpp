// placeholder: being written
#include "drdm/trainer.h"
