// Promise.withResolvers arrived in Node 22; libp2p 3 / helia 6 (under OrbitDB 4)
// call it, so Node 20 needs this. run.js imports this file before anything else.
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve, reject
      const promise = new this((res, rej) => { resolve = res; reject = rej })
      return { promise, resolve, reject }
    }
  })
}
