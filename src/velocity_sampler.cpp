// placeholder: being written
#include "drdm/velocity_sampler.h"
